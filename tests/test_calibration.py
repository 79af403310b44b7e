"""Ground calibration: the fit (agent/calibration.py) on synthetic points with a known answer, and
a calibrated camera on real footage: `edge-agent calibrate`, tickets' lat/lon, `edge-agent snapshot`."""

from __future__ import annotations

import json
import math
import tomllib

import av
import cv2
import jsonschema
import numpy as np
import pytest

from agent.app import Agent
from agent.calibration import LOCAL_M, WGS84, CalibrationError, GroundPoint, LocalFrame, fit, load, next_version, save
from agent.cli import main
from agent.config import load_config
from agent.faults import CAMERA_ZONE
from agent.typedtoml import ConfigError
from agent.types import Detections, EventKind, RuleEvent
from tests.helpers import REPO, write_camera, write_edge

FRAME = (768, 576)
ORIGIN = (31.2304, 121.4737)
# A street seen from a mast: these picture corners are these ground corners (metres east, north).
PIXEL_QUAD = np.float32([[100, 560], [700, 540], [520, 250], [260, 260]])
GROUND_QUAD = np.float32([[0, 0], [12, 0], [12, 20], [0, 20]])
TRUE = cv2.getPerspectiveTransform(PIXEL_QUAD, GROUND_QUAD)  # pixel -> metres


def to_ground(pixels) -> np.ndarray:
    return cv2.perspectiveTransform(np.float64(pixels).reshape(-1, 1, 2), TRUE).reshape(-1, 2)


def grid_pixels(n_side: int = 5) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(150, 650, n_side), np.linspace(300, 550, n_side))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def local_points(pixels) -> list[GroundPoint]:
    return [GroundPoint(tuple(p), tuple(g)) for p, g in zip(pixels, to_ground(pixels))]


def test_an_exact_homography_is_recovered_with_errors_near_zero():
    pixels = grid_pixels(3)
    cal = fit(local_points(pixels), LOCAL_M, ORIGIN, FRAME)
    assert max(cal.errors_px) < 1e-4 and cal.rms_px < 1e-4 and len(cal.errors_px) == 9
    probe = (400.0, 420.0)
    assert np.allclose(cal.ground_m(*probe), to_ground([probe])[0], atol=1e-5)
    # Areas: the picture quadrilateral is exactly the 12 m x 20 m rectangle on the ground.
    assert cal.area_m2(PIXEL_QUAD) == pytest.approx(240.0, rel=1e-6)
    # Pixels per metre, against a finite difference of the true map around the probe.
    d = 0.5
    gx = (to_ground([(probe[0] + d, probe[1])])[0] - to_ground([(probe[0] - d, probe[1])])[0]) / (2 * d)
    gy = (to_ground([(probe[0], probe[1] + d)])[0] - to_ground([(probe[0], probe[1] - d)])[0]) / (2 * d)
    m2_per_px = abs(gx[0] * gy[1] - gx[1] * gy[0])
    assert cal.px_per_m(*probe) == pytest.approx(1 / math.sqrt(m2_per_px), rel=1e-4)
    # Farther up the picture is farther away: fewer pixels per metre.
    assert cal.px_per_m(400, 280) < cal.px_per_m(400, 540)


def test_wgs84_points_give_lat_lon_in_a_local_plane_around_their_mean():
    frame = LocalFrame(ORIGIN)
    pixels = grid_pixels(3)
    points = [GroundPoint(tuple(p), frame.to_lat_lon(*g)) for p, g in zip(pixels, to_ground(pixels))]
    cal = fit(points, WGS84, None, FRAME)
    assert cal.rms_px < 1e-3
    probe = (333.0, 480.0)
    lat, lon = cal.to_lat_lon(*probe)
    want = LocalFrame(ORIGIN).to_metres(*frame.to_lat_lon(*to_ground([probe])[0]))
    got = LocalFrame(ORIGIN).to_metres(lat, lon)
    assert math.dist(got, want) < 0.01  # metres
    assert cal.area_m2(PIXEL_QUAD) == pytest.approx(240.0, rel=1e-3)


def test_the_local_frame_is_metric():
    frame = LocalFrame(ORIGIN)
    lat, lon = frame.to_lat_lon(100.0, 0.0)
    assert lat == pytest.approx(ORIGIN[0]) and lon > ORIGIN[1]
    assert frame.to_metres(*frame.to_lat_lon(30.0, -40.0)) == pytest.approx((30.0, -40.0), abs=1e-6)
    # 1e-5 degrees of latitude is 1.11 m anywhere.
    assert frame.to_metres(ORIGIN[0] + 1e-5, ORIGIN[1])[1] == pytest.approx(1.113, abs=0.001)


def test_noisy_clicks_give_the_rms_least_squares_predicts():
    """Gaussian click noise of sigma px per coordinate over n points, 8 parameters fitted: the
    residuals' expected sum of squares is sigma² (2n - 8), so rms per point is
    sigma * sqrt((2n - 8) / n)."""
    rng = np.random.default_rng(8)
    pixels = grid_pixels(6)  # 36 points
    sigma = 1.0
    clicked = pixels + rng.normal(0, sigma, pixels.shape)
    points = [GroundPoint(tuple(c), tuple(g)) for c, g in zip(clicked, to_ground(pixels))]
    cal = fit(points, LOCAL_M, ORIGIN, FRAME)
    n = len(points)
    assert cal.rms_px == pytest.approx(sigma * math.sqrt((2 * n - 8) / n), rel=0.2)
    # Each error is the distance between the click and its ground point projected back.
    assert len(cal.errors_px) == n and max(cal.errors_px) < 4 * sigma


def test_one_bad_point_shows_as_its_own_large_error():
    pixels = grid_pixels(3)
    points = local_points(pixels)
    x, y = points[4].ground
    points[4] = GroundPoint(points[4].pixel, (x + 2.0, y))  # typed 2 m off
    cal = fit(points, LOCAL_M, ORIGIN, FRAME)
    assert int(np.argmax(cal.errors_px)) == 4 and cal.errors_px[4] > 5


@pytest.mark.parametrize("points, reason", [
    (local_points(PIXEL_QUAD[:3]), "at least 4 points"),
    # three of four on one line in the picture
    (local_points(np.float32([[100, 500], [300, 500], [500, 500], [300, 300]])), "on a line"),
    # all along one kerb
    (local_points(np.float32([[100, 500], [200, 480], [300, 460], [400, 440], [500, 420]])), "on a line"),
    # the same point twice plus two others
    (local_points(np.float32([[100, 500], [100, 500], [500, 480], [300, 300]])), "on a line"),
])
def test_degenerate_sets_are_refused(points, reason):
    with pytest.raises(CalibrationError, match=reason):
        fit(points, LOCAL_M, ORIGIN, FRAME)


def test_collinear_on_the_ground_is_refused_even_when_the_picture_is_not():
    pixels = [(100, 560), (700, 540), (520, 250), (260, 260)]
    ground = [(0, 0), (5, 0), (10, 0), (0, 20)]
    with pytest.raises(CalibrationError, match="on a line"):
        fit([GroundPoint(p, g) for p, g in zip(pixels, ground)], LOCAL_M, ORIGIN, FRAME)


def test_swapped_ground_positions_fold_the_ground_and_are_refused():
    ground = GROUND_QUAD[[0, 1, 3, 2]]  # the two far corners swapped: a bow tie
    points = [GroundPoint(tuple(p), tuple(g)) for p, g in zip(PIXEL_QUAD, ground)]
    with pytest.raises(CalibrationError, match="folds"):
        fit(points, LOCAL_M, ORIGIN, FRAME)


def test_bad_datums_and_origins_are_refused():
    points = local_points(PIXEL_QUAD)
    with pytest.raises(CalibrationError, match="datum"):
        fit(points, "UTM", ORIGIN, FRAME)
    with pytest.raises(CalibrationError, match=r"point 2: pixel \(700, 540\) lies outside the 640x560 picture"):
        fit(points, LOCAL_M, ORIGIN, (640, 560))
    with pytest.raises(CalibrationError, match="origin"):
        fit(points, LOCAL_M, None, FRAME)
    # metres given as if they were degrees
    with pytest.raises(CalibrationError, match="latitude"):
        fit([GroundPoint(p.pixel, (p.ground[0] + 200, p.ground[1])) for p in points], WGS84, None, FRAME)


def test_pixels_beyond_the_horizon_have_no_ground():
    cal = fit(local_points(PIXEL_QUAD), LOCAL_M, ORIGIN, FRAME)
    front = np.sign(TRUE[2] @ (384, 400, 1))
    horizon_y = next(y for y in range(250, -5000, -1) if front * (TRUE[2] @ (384, y, 1)) <= 0)
    with pytest.raises(CalibrationError, match="horizon"):
        cal.to_lat_lon(384, horizon_y - 5)
    with pytest.raises(CalibrationError, match="horizon"):
        cal.area_m2([[0, horizon_y - 50], [768, horizon_y - 50], [768, 576], [0, 576]])


def test_a_sub_stream_of_the_same_shape_is_scaled_and_another_shape_refused():
    cal = fit(local_points(grid_pixels(3)), LOCAL_M, ORIGIN, FRAME)
    half = cal.for_frame_size((384, 288))
    assert half.frame_size == (384, 288)
    assert np.allclose(half.ground_m(200, 210), cal.ground_m(400, 420), atol=1e-6)
    assert cal.for_frame_size(FRAME) is cal
    with pytest.raises(CalibrationError, match="aspect"):
        cal.for_frame_size((640, 272))


def test_the_file_round_trips_and_keeps_a_backup(tmp_path):
    path = tmp_path / "cam.calibration.toml"
    noisy = [GroundPoint((p.pixel[0] + 0.7, p.pixel[1] - 0.4), p.ground) for p in local_points(grid_pixels(3))]
    cal = fit(noisy, LOCAL_M, ORIGIN, FRAME)
    assert next_version(path) == 1
    saved = save(path, cal, 1)
    assert saved.version == 1 and saved.created.endswith("Z")
    loaded = load(path)
    assert loaded.version == 1 and loaded.datum == LOCAL_M and loaded.origin == ORIGIN
    assert loaded.frame_size == FRAME and loaded.points == cal.points
    assert loaded.errors_px == pytest.approx(cal.errors_px, abs=1e-9)
    assert "rms_px = " in path.read_text() and "error_px = " in path.read_text()
    first = path.read_text()
    assert next_version(path) == 2
    save(path, cal, 2)
    assert (tmp_path / "cam.calibration.toml.bak").read_text() == first
    assert load(path).version == 2


def test_a_broken_file_is_a_config_error_naming_file_and_key(tmp_path):
    path = tmp_path / "cam.calibration.toml"
    path.write_text('version = 1\nframe_size = [768, 576]\ndatum = "local-m"\norigin = [31.2, 121.4]\n'
                    "[[points]]\npixel = [1, 2]\nground = [0, 0]\n")
    with pytest.raises(ConfigError, match=r"cam\.calibration\.toml: points: needs at least 4"):
        load(path)
    path.write_text("version = 0\nframe_size = [768, 576]\npoints = []\n")
    with pytest.raises(ConfigError, match="version: must be >= 1"):
        load(path)


# --- a calibrated camera on real footage -------------------------------------------------------
# vtest (PETS 2009) ships no ground truth, so its ground is "surveyed" in a synthetic local frame
# (metres east, north) with an assumed camera: a pinhole 7 m above flat ground, looking north,
# pitched 25° down, focal length 750 px, principal point at the picture's centre, no roll and no
# lens distortion. It agrees with the footage to about 10 %: the man who stands still at x 654 is
# 106 px tall where it predicts 103 px for 1.75 m, the pair at y 260 are 81 px where it predicts
# 73 px. A point's surveyed position is where that camera's ray through the pixel meets the ground,
# rounded to 10 cm as a tape or handheld GNSS would give it.
CAMERA_HEIGHT_M, PITCH_DEG, FOCAL_PX, CENTRE = 7.0, 25.0, 750.0, (384.0, 288.0)
# Ground points picked by eye in vtest's first frame (saved with cv2 and looked at, enlarged).
LANDMARKS = {
    "left cone, middle of its base": (42, 190),
    "third cone, middle of its base": (299, 207),
    "fourth cone, middle of its base": (446, 199),
    "boulder on the lawn, middle of its foot": (177, 272),
    "lamp post, foot": (432, 390),
    "south-east end of the white line on the tarmac": (597, 334),
    "yellow paint mark on the kerb, east": (682, 452),
}
# The man who stands still on the tarmac from about 55 s to 61 s: between his feet, by eye in
# frame 580 (58 s).
STANDING_FEET = (654, 406)
TOLERANCE_M = 1.5


def surveyed(u: float, v: float) -> tuple[float, float]:
    """Metres east and north, from under the camera, of the ground seen at pixel (u, v)."""
    pitch = math.radians(PITCH_DEG)
    forward = np.array([0.0, math.cos(pitch), -math.sin(pitch)])  # east, north, up
    right, down = np.array([1.0, 0.0, 0.0]), np.array([0.0, -math.sin(pitch), -math.cos(pitch)])
    ray = forward + (u - CENTRE[0]) / FOCAL_PX * right + (v - CENTRE[1]) / FOCAL_PX * down
    t = CAMERA_HEIGHT_M / -ray[2]
    return round(float(t * ray[0]), 1), round(float(t * ray[1]), 1)


def write_points(path, pixels) -> None:
    path.write_text("x_px,y_px,x_m,y_m\n" + "".join(f"{u},{v},{x},{y}\n" for (u, v), (x, y) in
                                                    ((p, surveyed(*p)) for p in pixels)))


@pytest.fixture
def plaza(tmp_path, footage):
    """A box with one file camera on vtest and a 3 s person dwell zone around where the man stands."""
    camera = write_camera(tmp_path, "plaza-cam", str(footage["vtest.mp4"]), dwell=3,
                          polygon="[[625, 380], [690, 380], [690, 430], [625, 430]]")
    return write_edge(tmp_path, [camera], command_key=False), camera


def test_a_ticket_from_a_calibrated_camera_carries_the_surveyed_lat_lon(plaza, tmp_path, capsys):
    """Must show: calibrated on seven landmarks of a real frame, the camera's ticket about the man
    standing still gives his position on the ground within TOLERANCE_M of where he was surveyed."""
    edge, camera = plaza
    points = tmp_path / "points.csv"
    write_points(points, LANDMARKS.values())
    origin = "31.2304,121.4737"
    assert main(["-c", str(edge), "calibrate", "plaza-cam", "--points", str(points), "--origin", origin]) == 0
    out = capsys.readouterr().out
    assert out.count(" error ") == len(LANDMARKS) and "rms " in out
    calibration_file = tmp_path / "plaza-cam.calibration.toml"
    saved = tomllib.loads(calibration_file.read_text())
    assert saved["version"] == 1 and saved["frame_size"] == [768, 576] and len(saved["points"]) == 7
    assert tomllib.loads(camera.read_text())["calibration"] == "plaza-cam.calibration.toml"
    assert (tmp_path / "var" / "reference" / "plaza-cam.jpg").is_file()

    footage_file = tomllib.loads(camera.read_text())["url"]
    assert main(["-c", str(edge), "replay", footage_file, "--camera", "plaza-cam"]) == 0
    tickets = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    opened = [t for t in tickets if t["event"] == "opened" and t["zone_id"] == "plaza"]
    assert opened, f"no ticket opened in the zone: {[t['event'] for t in tickets]}"
    ticket = opened[0]
    location = ticket["location"]
    schema = json.loads((REPO / "agent" / "schemas" / "ticket.schema.json").read_text())
    jsonschema.validate(location, schema["properties"]["location"])
    assert location["position"] == "object"
    assert location["camera"] == {"lat": 31.2304, "lon": 121.4737}
    assert location["calibration"]["version"] == 1 and location["calibration"]["rms_px"] < 3
    got = LocalFrame((31.2304, 121.4737)).to_metres(location["lat"], location["lon"])
    want = surveyed(*STANDING_FEET)
    assert math.dist(got, want) < TOLERANCE_M, (got, want, ticket["boxes"])


def calibrate(edge, points, *extra) -> int:
    return main(["-c", str(edge), "calibrate", "plaza-cam", "--points", str(points), *extra])


def test_calibrate_refuses_bad_tables_and_changes_nothing(plaza, tmp_path, capsys):
    edge, camera = plaza
    before = camera.read_text()
    points = tmp_path / "points.csv"
    write_points(points, list(LANDMARKS.values())[:3])
    assert calibrate(edge, points, "--origin", "31.2304,121.4737") == 1
    assert "calibrate: needs at least 4 points, got 3" in capsys.readouterr().err
    write_points(points, LANDMARKS.values())
    assert calibrate(edge, points) == 1
    assert "origin" in capsys.readouterr().err
    points.write_text("u,v,lat,lon\n1,2,3,4\n")
    assert calibrate(edge, points) == 2
    assert "points.csv: line 1: header must be x_px,y_px,lat,lon or x_px,y_px,x_m,y_m" in capsys.readouterr().err
    points.write_text("x_px,y_px,lat,lon\n1,2,3\n")
    assert calibrate(edge, points, "--datum", "WGS-84") == 2
    assert "points.csv: line 2: expected 4 numbers" in capsys.readouterr().err
    assert camera.read_text() == before
    assert not (tmp_path / "plaza-cam.calibration.toml").exists()


def test_recalibrating_bumps_the_version_and_keeps_backups(plaza, tmp_path, capsys):
    edge, camera = plaza
    before = camera.read_text()
    points = tmp_path / "points.csv"
    write_points(points, LANDMARKS.values())
    assert calibrate(edge, points, "--origin", "31.2304,121.4737") == 0
    after = camera.read_text()
    # One line more, among the top-level keys; everything else as it was.
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == ['calibration = "plaza-cam.calibration.toml"']
    assert after.index("calibration =") < after.index("[location]")
    assert (tmp_path / "plaza-cam.toml.bak").read_text() == before
    assert calibrate(edge, points, "--origin", "31.2304,121.4737") == 0
    assert camera.read_text() == after
    assert tomllib.loads((tmp_path / "plaza-cam.calibration.toml").read_text())["version"] == 2
    assert tomllib.loads((tmp_path / "plaza-cam.calibration.toml.bak").read_text())["version"] == 1
    capsys.readouterr()
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "ground calibration: " in out and "version 2, 7 points on 768x576" in out


def test_a_broken_calibration_stops_the_agent_naming_it_and_calibrate_repairs_it(plaza, tmp_path, capsys):
    edge, camera = plaza
    camera.write_text(camera.read_text().replace("[location]", 'calibration = "cal.toml"\n\n[location]'))
    assert main(["-c", str(edge), "check"]) == 2
    assert "plaza-cam.toml: calibration: file not found" in capsys.readouterr().err
    (tmp_path / "cal.toml").write_text('version = 4\nframe_size = [768, 576]\ndatum = "local-m"\n'
                                       "origin = [31.2304, 121.4737]\n[[points]]\npixel = [1, 2]\nground = [0, 0]\n")
    assert main(["-c", str(edge), "check"]) == 2
    assert "cal.toml: points: needs at least 4 points, got 1" in capsys.readouterr().err
    points = tmp_path / "points.csv"
    write_points(points, LANDMARKS.values())
    assert calibrate(edge, points, "--origin", "31.2304,121.4737") == 0
    assert tomllib.loads((tmp_path / "cal.toml").read_text())["version"] == 5
    assert main(["-c", str(edge), "check"]) == 0


CROWD_CAMERA = """\
id = "crowd-cam"
url = "/nonexistent.mp4"
calibration = "crowd-cam.calibration.toml"

[location]
lat = 31.2304
lon = 121.4737
grid_code = "310101001001"

[zones.square]
polygon = [[400, 300], [700, 300], [700, 460], [400, 460]]
[zones.square.rule]
type = "crowd"
{area}
"""


@pytest.mark.parametrize("area", ["", "px_per_m2 = 400.0"])
def test_a_crowd_zone_takes_its_ground_area_from_the_calibration(tmp_path, area):
    cal = save(tmp_path / "crowd-cam.calibration.toml",
               fit([GroundPoint(p, surveyed(*p)) for p in LANDMARKS.values()], LOCAL_M, ORIGIN, FRAME), 1)
    camera = tmp_path / "crowd-cam.toml"
    camera.write_text(CROWD_CAMERA.format(area=area))
    config = load_config(write_edge(tmp_path, [camera], command_key=False))
    params = config.cameras[0].zones[0].params
    polygon = [[400, 300], [700, 300], [700, 460], [400, 460]]
    assert params.px_per_m2 is None and params.area_m2 == pytest.approx(cal.area_m2(polygon))
    assert 20 < params.area_m2 < 200  # a patch of tarmac some 5 to 10 m across
    camera.write_text(CROWD_CAMERA.format(area="area_m2 = 55.0"))
    assert load_config(tmp_path / "edge.toml").cameras[0].zones[0].params.area_m2 == 55.0  # given wins


def test_zone_level_events_lie_at_the_zone_centroid_and_faults_at_the_camera(tmp_path):
    cal = save(tmp_path / "crowd-cam.calibration.toml",
               fit([GroundPoint(p, surveyed(*p)) for p in LANDMARKS.values()], LOCAL_M, ORIGIN, FRAME), 3)
    camera = tmp_path / "crowd-cam.toml"
    camera.write_text(CROWD_CAMERA.format(area=""))
    book = Agent(load_config(write_edge(tmp_path, [camera], command_key=False))).books["crowd-cam"]
    image = np.zeros((576, 768, 3), np.uint8)
    boxes = np.float32([[450, 300, 480, 380], [600, 320, 630, 400]])

    def event(zone, rule, boxes, ts):
        return RuleEvent(EventKind.OPENED, rule, zone, ts, ts, ts, "person", 0.9, boxes, {})

    crowd = book.on_rule_event(event("square", "crowd", boxes, 1.0e9), image, Detections.empty())
    location = crowd["location"]
    assert location["position"] == "zone" and location["calibration"] == {"version": 3, "rms_px": round(cal.rms_px, 2)}
    want = cal.centroid_m([[400, 300], [700, 300], [700, 460], [400, 460]])
    assert math.dist(cal.frame.to_metres(location["lat"], location["lon"]), want) < 0.05
    fault = book.on_rule_event(event(CAMERA_ZONE, "view_shifted", np.zeros((0, 4), np.float32), 1.0e9 + 5),
                               image, Detections.empty())
    assert fault["location"]["position"] == "camera"
    assert (fault["location"]["lat"], fault["location"]["lon"]) == (31.2304, 121.4737)
    # A picture of another shape (a cropped sub-stream) cannot use the calibration: the camera's place.
    cleared = RuleEvent(EventKind.CLEARED, "crowd", "square", 1.0e9 + 9, 1.0e9, 1.0e9 + 9, "person", 0.9, boxes, {})
    book.on_rule_event(cleared, image, Detections.empty())
    other = book.on_rule_event(event("square", "crowd", boxes[:1] / 2, 1.0e9 + 2000),
                               np.zeros((272, 640, 3), np.uint8), Detections.empty())
    assert other["location"]["position"] == "camera" and other["location"]["calibration"]["version"] == 3


def test_snapshot_writes_the_annotated_frame_with_people_hidden(plaza, tmp_path, capsys, footage):
    edge, _ = plaza
    out = tmp_path / "snap.jpg"
    assert main(["-c", str(edge), "snapshot", "plaza-cam", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"snapshot plaza-cam: {out} (768x576)" in said and " 0 detections" not in said
    picture = cv2.imread(str(out))
    assert picture.shape == (576, 768, 3)
    with av.open(str(footage["vtest.mp4"])) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="bgr24")
    # The man on the tarmac (frame 0, about x 640-690, y 240-320) is pixelated: few distinct
    # colours left where the raw frame has many.
    region = (slice(245, 315), slice(645, 685))
    assert len(np.unique(picture[region].reshape(-1, 3) // 16, axis=0)) < \
        len(np.unique(raw[region].reshape(-1, 3) // 16, axis=0))
    missing = tmp_path / "gone.toml"
    missing.write_text((tmp_path / "plaza-cam.toml").read_text().replace(str(footage["vtest.mp4"]), "/nonexistent.mp4"))
    edge2 = write_edge(tmp_path, [missing], command_key=False)
    capsys.readouterr()
    assert main(["-c", str(edge2), "snapshot", "plaza-cam", "--out", str(out)]) == 1
    assert "snapshot: camera plaza-cam: no frame" in capsys.readouterr().err


def test_snapshot_and_calibrate_read_a_live_rtsp_camera(tmp_path, footage, rtsp_server, capsys):
    server = rtsp_server({"/cam": footage["vtest.mp4"]})
    camera = write_camera(tmp_path, "plaza-cam", server.urls["/cam"])
    edge = write_edge(tmp_path, [camera], command_key=False)
    out = tmp_path / "live.png"
    assert main(["-c", str(edge), "snapshot", "plaza-cam", "--out", str(out)]) == 0
    assert cv2.imread(str(out)).shape == (576, 768, 3)
    points = tmp_path / "points.csv"
    write_points(points, LANDMARKS.values())
    assert calibrate(edge, points, "--origin", "31.2304,121.4737") == 0
    assert "7 points on its 768x576 picture" in capsys.readouterr().out
    assert cv2.imread(str(tmp_path / "var" / "reference" / "plaza-cam.jpg")).shape == (576, 768, 3)
