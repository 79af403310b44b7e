"""Ground calibration: a homography between one camera's picture and the ground it looks at.

A technician clicks four or more points on the ground in a frame (a kerb corner, a manhole, the
corner of a paving slab) and gives each its position: latitude and longitude (``datum =
"WGS-84"``) or metres east and north in a local frame whose (0, 0) is at ``origin`` (``datum =
"local-m"``). From then on the agent can say where on the ground a pixel is, how many m² a zone
covers and how many pixels a metre spans at a point.

**The ground plane.** WGS-84 points are first put into a local tangent plane in metres, x east
and y north, by the equirectangular projection around their mean (around ``origin`` for
``local-m``): x = R·Δlon·cos(lat0), y = R·Δlat. At street scale (points within a few hundred
metres) its error is below a millimetre per 100 m, far below a click's; it is not for a view
spanning kilometres. Fitting in metres makes m² and pixels per metre real numbers.

**The fit.** ``cv2.findHomography`` with method 0: least squares over all points, no RANSAC (with
a handful of hand-picked points there is no outlier majority to vote one out; a bad point must
show as a large error for the technician to fix). The homography is fitted from ground to
pixels, so the refinement minimises the error where it is measured, in pixels of the picture
the points were clicked on; ``errors_px`` are the distances between each clicked pixel and its
ground point projected back into the picture.

**Refused** (:class:`CalibrationError`): fewer than four points; a pixel outside the picture;
point sets with no four points of which no three lie on a line, in the picture or on the ground
(the fit would be singular); a fit that folds, i.e. whose horizon (the pixels mapped to
infinity) crosses the points, as when two points' ground positions are swapped.

The file (``camera_config/<camera>.calibration.toml``, named by the camera file's
``calibration`` key) holds the points, not the matrix: :func:`load` fits again, so the errors
shown are always those of the points in the file.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.files import write_atomically
from agent.typedtoml import ConfigError, load_dataclass, read_toml, setting

# cv2 is imported inside the functions that use it: agent.config imports this module, and reading
# the config must not load OpenCV (tests/test_config.py).

WGS84 = "WGS-84"
LOCAL_M = "local-m"
DATUMS = (WGS84, LOCAL_M)
EARTH_RADIUS_M = 6_378_137.0  # WGS-84 semi-major axis
MIN_POINTS = 4
# Three points are "on a line" when the third lies closer to the line through the other two than
# this fraction of their distance (1 px off a 100 px line): the fit would hinge on noise.
COLLINEAR = 0.01
# A stream of another shape than the calibration picture cannot be scaled to it.
ASPECT_TOLERANCE = 0.01


class CalibrationError(ValueError):
    """Points that cannot be fitted, or a calibration that cannot serve a picture; says why."""


@dataclass(frozen=True)
class GroundPoint:
    pixel: tuple[float, float]  # x, y in pixels of the calibration picture
    ground: tuple[float, float]  # lat, lon (WGS-84) or x_m east, y_m north (local-m)


@dataclass(frozen=True)
class LocalFrame:
    """The tangent plane around ``origin`` (lat, lon): x metres east, y metres north."""

    origin: tuple[float, float]

    def to_metres(self, lat: float, lon: float) -> tuple[float, float]:
        lat0, lon0 = self.origin
        return (EARTH_RADIUS_M * math.radians(lon - lon0) * math.cos(math.radians(lat0)),
                EARTH_RADIUS_M * math.radians(lat - lat0))

    def to_lat_lon(self, x_m: float, y_m: float) -> tuple[float, float]:
        lat0, lon0 = self.origin
        return (lat0 + math.degrees(y_m / EARTH_RADIUS_M),
                lon0 + math.degrees(x_m / (EARTH_RADIUS_M * math.cos(math.radians(lat0)))))


@dataclass(frozen=True, eq=False)
class GroundCalibration:
    """A fitted calibration: made by :func:`fit`, read by :func:`load`."""

    points: tuple[GroundPoint, ...]
    datum: str
    origin: tuple[float, float] | None  # as given: local-m's (0, 0); None for WGS-84 (the mean is used)
    frame_size: tuple[int, int]  # w, h of the picture the points were clicked on
    frame: LocalFrame  # the metric plane the homography maps to
    homography: np.ndarray  # 3x3, pixel -> metres of ``frame``
    errors_px: tuple[float, ...]  # per point, pixels of frame_size
    version: int = 0  # 0: not saved yet
    created: str = ""

    @property
    def rms_px(self) -> float:
        return math.sqrt(sum(e * e for e in self.errors_px) / len(self.errors_px))

    def ground_m(self, x_px: float, y_px: float) -> tuple[float, float]:
        """Metres east and north in the local frame of the ground under a pixel."""
        (x, y), = _project(self.homography, [(x_px, y_px)], "the pixel")
        return float(x), float(y)

    def to_lat_lon(self, x_px: float, y_px: float) -> tuple[float, float]:
        return self.frame.to_lat_lon(*self.ground_m(x_px, y_px))

    def area_m2(self, polygon_px) -> float:
        """Ground area of a polygon given in pixels: its corners mapped to the ground (a
        homography keeps lines straight, so the mapped polygon is exact)."""
        ground = _project(self.homography, polygon_px, "the polygon")
        x, y = ground[:, 0], ground[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)

    def centroid_m(self, polygon_px) -> tuple[float, float]:
        """Metres east and north of a polygon's centroid on the ground (not the picture's: a
        zone reaching into the distance has most of its ground far away)."""
        g = _project(self.homography, polygon_px, "the polygon")
        x, y, xn, yn = g[:, 0], g[:, 1], np.roll(g[:, 0], -1), np.roll(g[:, 1], -1)
        cross = x * yn - xn * y
        twice_area = cross.sum()
        if abs(twice_area) < 1e-9:
            return float(x.mean()), float(y.mean())
        return (float(((x + xn) * cross).sum() / (3 * twice_area)),
                float(((y + yn) * cross).sum() / (3 * twice_area)))

    def px_per_m(self, x_px: float, y_px: float) -> float:
        """Pixels one metre of ground spans at a pixel (the geometric mean of the two directions:
        the square root of pixels per m² there)."""
        h = self.homography
        w = float(h[2] @ (x_px, y_px, 1.0))
        if w <= 0:
            raise CalibrationError(f"pixel ({x_px:g}, {y_px:g}) is at or above the horizon")
        # The Jacobian determinant of a plane homography is det(H) / w^3.
        m2_per_px = abs(np.linalg.det(h)) / w ** 3
        return float(1 / math.sqrt(m2_per_px))

    def for_frame_size(self, size: tuple[int, int]) -> GroundCalibration:
        """The same calibration for a picture of ``size`` (w, h), e.g. a camera's sub-stream: the
        pixel points scaled; refused when the shape differs (that picture is cropped, not scaled)."""
        size = (int(size[0]), int(size[1]))
        if size == self.frame_size:
            return self
        fw, fh = self.frame_size
        if abs(size[0] / size[1] - fw / fh) > ASPECT_TOLERANCE * fw / fh:
            raise CalibrationError(f"the picture is {size[0]}x{size[1]}, the calibration's {fw}x{fh}: another "
                                   "aspect ratio (a cropped picture) cannot be scaled to it; calibrate again")
        sx, sy = size[0] / fw, size[1] / fh
        scaled = [GroundPoint((p.pixel[0] * sx, p.pixel[1] * sy), p.ground) for p in self.points]
        return dataclasses.replace(fit(scaled, self.datum, self.origin, size), version=self.version,
                                   created=self.created)


def fit(given: Sequence[GroundPoint], datum: str, origin: tuple[float, float] | None,
        frame_size: tuple[int, int]) -> GroundCalibration:
    """Fit the homography of the ``given`` points; :class:`CalibrationError` says why it cannot be."""
    import cv2

    points = tuple(GroundPoint((float(p.pixel[0]), float(p.pixel[1])), (float(p.ground[0]), float(p.ground[1])))
                   for p in given)
    if datum not in DATUMS:
        raise CalibrationError(f"datum must be {' or '.join(DATUMS)}, got {datum!r}")
    if len(points) < MIN_POINTS:
        raise CalibrationError(f"needs at least {MIN_POINTS} points, got {len(points)}")
    if len(frame_size) != 2 or min(frame_size) <= 0:
        raise CalibrationError(f"frame_size must be [width, height] > 0, got {list(frame_size)}")
    pixels = np.array([p.pixel for p in points], np.float64)
    for i, (x, y) in enumerate(pixels):
        if not (0 <= x <= frame_size[0] and 0 <= y <= frame_size[1]):
            raise CalibrationError(f"point {i + 1}: pixel ({x:g}, {y:g}) lies outside the "
                                   f"{frame_size[0]}x{frame_size[1]} picture")
    if datum == LOCAL_M:
        if origin is None:
            raise CalibrationError("datum local-m needs origin = [lat, lon] of the local frame's (0, 0)")
        frame = LocalFrame(_lat_lon(origin, "origin"))
        metres = np.array([p.ground for p in points], np.float64)
    else:
        for i, p in enumerate(points):
            _lat_lon(p.ground, f"point {i + 1}")
        mean = np.mean([p.ground for p in points], axis=0)
        frame = LocalFrame((float(mean[0]), float(mean[1])) if origin is None else _lat_lon(origin, "origin"))
        metres = np.array([frame.to_metres(*p.ground) for p in points], np.float64)
    if not np.isfinite(pixels).all() or not np.isfinite(metres).all():
        raise CalibrationError("points must be finite numbers")
    if _general_four(pixels, metres) is None:
        raise CalibrationError("no four points of which no three lie on a line, in the picture and on the "
                               "ground: spread the points over the ground (corners of an area, not along "
                               "one kerb)")
    to_pixels, _ = cv2.findHomography(metres, pixels, 0)
    if to_pixels is None or not np.isfinite(to_pixels).all() or abs(np.linalg.det(to_pixels)) < 1e-12:
        raise CalibrationError("the points admit no homography (degenerate)")
    to_ground = np.linalg.inv(to_pixels)
    homography = _facing(to_ground / np.linalg.norm(to_ground), pixels)  # unit norm: det and w comparable
    back = cv2.perspectiveTransform(metres.reshape(-1, 1, 2), to_pixels).reshape(-1, 2)
    errors = tuple(float(e) for e in np.linalg.norm(back - pixels, axis=1))
    return GroundCalibration(points, datum, None if origin is None else (origin[0], origin[1]),
                             (int(frame_size[0]), int(frame_size[1])), frame, homography, errors)


def _lat_lon(value, what: str) -> tuple[float, float]:
    lat, lon = (float(v) for v in value)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CalibrationError(f"{what}: ({lat:g}, {lon:g}) is not a latitude, longitude (give [lat, lon], "
                               "or datum local-m for metres)")
    return lat, lon


def _flat(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    """Whether the three points lie (nearly) on a line, relative to their spread."""
    longest = max(np.linalg.norm(b - a), np.linalg.norm(c - a), np.linalg.norm(c - b))
    if longest == 0:
        return True
    cross = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    return cross / longest ** 2 < COLLINEAR  # the height of the triangle over its longest side


def _general_four(pixels: np.ndarray, metres: np.ndarray) -> tuple[int, ...] | None:
    """Indices of four points with no three on a line in either set: what makes the fit unique."""
    for four in itertools.combinations(range(len(pixels)), 4):
        if not any(_flat(*s[list(three)]) for s in (pixels, metres) for three in itertools.combinations(four, 3)):
            return four
    return None


def _facing(homography: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``homography`` signed so that w (the projective depth) is positive over the points' hull,
    where the ground is; refused when w changes sign there: the horizon crosses the points and
    the ground quadrilateral folds (a bow tie), typically two points' ground positions swapped."""
    import cv2

    hull = cv2.convexHull(pixels.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    w = homography[2] @ np.vstack([hull.T, np.ones(len(hull))])
    if (w > 0).all():
        return homography
    if (w < 0).all():
        return -homography  # the same map
    raise CalibrationError("the fit folds the ground over (its horizon crosses the points): check that "
                           "every point's ground position is its own, two may be swapped")


def _project(homography: np.ndarray, points_px, what: str) -> np.ndarray:
    import cv2

    pts = np.asarray(points_px, np.float64).reshape(-1, 2)
    w = homography[2] @ np.vstack([pts.T, np.ones(len(pts))])
    if (w <= 0).any():
        raise CalibrationError(f"{what} reaches the horizon or above it: no ground there")
    return cv2.perspectiveTransform(pts.reshape(-1, 1, 2), homography).reshape(-1, 2)


# --- the file -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PointSection:
    pixel: tuple[float, float] = setting(help="x, y in pixels of the calibration picture")
    ground: tuple[float, float] = setting(help="lat, lon (WGS-84) or x_m east, y_m north (local-m)")
    error_px: float | None = setting(None, ge=0, help="Written for people: the reprojection error; fitted again at load")


@dataclass(frozen=True)
class CalibrationFile:
    version: int = setting(ge=1, help="Increases on every save; stamped on tickets")
    frame_size: tuple[int, int] = setting(help="[width, height] of the picture the points were clicked on")
    points: list[PointSection] = setting(help="At least 4 ground points")
    created: str = setting("", help="UTC time of the save, ISO 8601")
    datum: str = setting(WGS84, help="WGS-84 (ground = lat, lon) or local-m (ground = metres east, north)")
    origin: tuple[float, float] | None = setting(None, help="lat, lon of the local frame's (0, 0); local-m only")
    rms_px: float | None = setting(None, ge=0, help="Written for people: the fit's rms error; fitted again at load")


def load(path: str | Path) -> GroundCalibration:
    """Read and fit a calibration file; any problem is a :class:`ConfigError` naming the file."""
    path = Path(path)
    raw = load_dataclass(CalibrationFile, read_toml(path), path)
    try:
        calibration = fit([GroundPoint(p.pixel, p.ground) for p in raw.points], raw.datum, raw.origin, raw.frame_size)
    except CalibrationError as exc:
        raise ConfigError(path, "points", str(exc)) from None
    return dataclasses.replace(calibration, version=raw.version, created=raw.created)


def save(path: str | Path, calibration: GroundCalibration, version: int) -> GroundCalibration:
    """Write ``calibration`` as ``version``, atomically (temp file, fsync, rename), the old file
    kept as ``<file>.bak``; returns it with its version and time."""
    path = Path(path)
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    saved = dataclasses.replace(calibration, version=int(version), created=created)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".bak"))
    write_atomically(path, render(saved).encode("utf-8"))
    return saved


def render(calibration: GroundCalibration) -> str:
    """The TOML text of a calibration file."""
    c = calibration
    lines = [
        "# Ground calibration (edge-agent calibrate, or the calibration page). Points: pixel = [x, y] of",
        f"# a {c.frame_size[0]}x{c.frame_size[1]} picture, ground = "
        + ("[lat, lon] (WGS-84)." if c.datum == WGS84 else "[x_m east, y_m north] from origin."),
        f"version = {c.version}",
        f'created = "{c.created}"',
        f"frame_size = [{c.frame_size[0]}, {c.frame_size[1]}]",
        f'datum = "{c.datum}"',
    ]
    if c.origin is not None:
        lines.append(f"origin = [{_num(c.origin[0])}, {_num(c.origin[1])}]")
    lines.append(f"rms_px = {c.rms_px:.3f}")
    for p, error in zip(c.points, c.errors_px):
        lines += ["", "[[points]]", f"pixel = [{_num(p.pixel[0])}, {_num(p.pixel[1])}]",
                  f"ground = [{_num(p.ground[0])}, {_num(p.ground[1])}]", f"error_px = {error:.3f}"]
    return "\n".join(lines) + "\n"


def next_version(path: str | Path) -> int:
    """The version the next save of ``path`` gets: one more than the file's, 1 for a new file."""
    path = Path(path)
    if not path.exists():
        return 1
    version = read_toml(path).get("version")
    return version + 1 if isinstance(version, int) and not isinstance(version, bool) else 1


def _num(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same float
