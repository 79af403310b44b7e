"""Ground calibration: the fit (agent/calibration.py) on synthetic points with a known answer."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from agent.calibration import (LOCAL_M, WGS84, CalibrationError, GroundPoint, LocalFrame, fit, load,
                               next_version, save)
from agent.typedtoml import ConfigError

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
