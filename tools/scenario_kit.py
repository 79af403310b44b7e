#!/usr/bin/env python3
"""Build scenario composites: real footage with real objects pasted in at known times.

A recipe (``scenarios/<name>.toml``, format in docs/evaluation.md) names a background video, a
camera config, objects to paste (``[[placement]]``) and the events a correct agent must report
(``[[truth]]``). The kit writes three files into the output folder:

  <name>.mp4          the composite: H.264 (libx264, yuv420p), the background's fps, a keyframe
                      every 2 s, no B-frames (the same grid the agent's clips and the RTSP test
                      server expect)
  <name>.camera.toml  the recipe's camera config with ``url`` pointing at the composite
  <name>.truth.json   the truth events, the composite's fps, frame count and duration, and the
                      build key (a hash of everything the composite is made from)

Usage:
    python tools/scenario_kit.py scenarios/x.toml [more.toml ...] [--out .cache/scenarios]

    from tools.scenario_kit import load_recipe, build, ensure_built
    composite = ensure_built(load_recipe(path), out_dir)   # rebuilds only if the key changed

Why composites: every pixel is real (a real background with its own noise and light, a real
object photographed or filmed), and the truth is known to the frame because the kit put the object
there, so recall, false positives and time-to-open can be measured without hand labelling.
The pasted object interacts with the scene only as far as the recipe asks: ``behind_movers``
hides it where the background video's own walkers pass in front of it, and the recipe's
``[effects]`` (light ramps, moving soft shadows or lamps, sensor noise, JPEG artefacts) are applied
to the whole composite frame after pasting, so they fall on the object and the scene alike. Its own
shadow is still only the kit's ellipse. The build is deterministic: the noise comes from the
recipe's seed, GrabCut's k-means from cv2's seeded RNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python tools/scenario_kit.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import CameraFile
from agent.typedtoml import ConfigError, load_dataclass, read_toml, setting
from tools.fetch_footage import ALL_NAMES as FOOTAGE_NAMES, ensure_footage
from tools.h264 import add_fixed_gop_stream

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / ".cache" / "scenarios"
GOP_S = 2
CRF = 20
SMALL_FRINGE_SRC_PX = 2  # GrabCut's fringe of old background, in source pixels
SMALL_EDGE_SIGMA_PX = 0.5  # optical softness of a small object's edge, composite pixels
SHADOW_DARKENING = 0.45  # how much of the light the soft shadow takes at its centre
# A background pixel this far (grey levels, largest of B, G, R) from the video's temporal median is
# a real mover (a walker), in front of anything pasted with behind_movers. vtest's still ground
# stays within ~10 of its median; people differ by 40-120.
MOVER_LEVEL = 30.0
MEDIAN_SAMPLES = 40  # frames spread over the whole video for its median: walkers drop out of it
REVERSE_CHUNK = 40  # frames decoded at once when a loop plays the video backwards


class Mask(str, Enum):
    BOX = "box"  # the whole box, edges feathered
    GRABCUT = "grabcut"  # cv2.grabCut inside the box: the object without its photo's background


@dataclass(frozen=True)
class Background:
    video: str = setting(help="A footage name (vtest.mp4, bikes.mp4, ...) or a path relative to the recipe")
    start_s: float = setting(0.0, ge=0, help="Skip this much of the video")
    duration_s: float | None = setting(None, gt=0, help="Keep this much after start_s (default: to the end)")
    loops: int = setting(1, ge=1, help="Passes over the trimmed video, alternately forwards and backwards "
                         "(no jump at the turn): a clip long enough for a rule's default dwell")


def _interpolate(keyframes: tuple[tuple[float, ...], ...], t: float) -> tuple[float, ...]:
    """The value of ``[t, v1, v2, ...]`` keyframes at ``t``: linear, held before the first and after
    the last."""
    times, *values = np.array(keyframes, dtype=np.float64).T
    return tuple(float(np.interp(t, times, v)) for v in values)


def _check_keyframes(keyframes: tuple[tuple[float, ...], ...], key: str) -> None:
    if [k[0] for k in keyframes] != sorted(k[0] for k in keyframes):
        raise ValueError(f"{key}: keyframe times must increase")


@dataclass(frozen=True)
class Placement:
    box: tuple[int, int, int, int] = setting(help="x1, y1, x2, y2 of the object in its source picture")
    height_px: float = setting(gt=0, help="The object's height in the composite, in pixels")
    image: str | None = setting(None, help="Source photo or video: a footage name or a path relative to the recipe")
    video_frame: int | None = setting(None, ge=0, help="Source: this frame (index) of the video in image, "
                                      "or of the background video when image is not given")
    mask: Mask = setting(Mask.BOX, help="box: the whole box; grabcut: cut the object out of it")
    keep: tuple[tuple[int, int, int, int], ...] = setting(
        (), help="grabcut only: x1, y1, x2, y2 boxes surely on the object (seeds, like a user's strokes)")
    at: tuple[float, float] | None = setting(None, help="x, y where the object's bottom centre goes")
    moves: tuple[tuple[float, float, float], ...] = setting(
        (), help="[t, x, y] keyframes of the bottom centre, linearly interpolated; instead of at")
    appear_s: float = setting(0.0, ge=0, help="Composite time the object appears")
    remove_s: float | None = setting(None, gt=0, help="Composite time it is taken away (default: never)")
    shadow: bool = setting(False, help="A soft dark ellipse under the object")
    noise: float = setting(0.0, ge=0, help="Std dev (grey levels) of fresh per-frame noise on the object")
    behind_movers: bool = setting(False, help="Not drawn where the background video's own movers (walkers) "
                                  "differ from its temporal median: they pass in front of the object")

    def __post_init__(self):
        if self.image is None and self.video_frame is None:
            raise ValueError("give image, video_frame or both")
        if (self.at is None) == (not self.moves):
            raise ValueError("give exactly one of at and moves")
        for x1, y1, x2, y2 in (self.box, *self.keep):
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"box {[x1, y1, x2, y2]}: need x1 < x2 and y1 < y2")
        if self.keep and self.mask is not Mask.GRABCUT:
            raise ValueError("keep: only with mask = \"grabcut\"")
        _check_keyframes(self.moves, "moves")
        if self.remove_s is not None and self.remove_s <= self.appear_s:
            raise ValueError("remove_s: must be after appear_s")

    def position(self, t: float) -> tuple[float, float]:
        """Where the bottom centre is at composite time ``t``: ``at``, or interpolated ``moves``."""
        if self.at is not None:
            return self.at
        x, y = _interpolate(self.moves, t)
        return x, y

    def visible(self, t: float) -> bool:
        return t >= self.appear_s and (self.remove_s is None or t < self.remove_s)


@dataclass(frozen=True)
class Patch:
    """A soft-edged ellipse of the frame whose light is multiplied by ``gain``: gain < 1 is a
    shadow (a cloud's or a tree's, moving along ``moves``), gain > 1 a lamp or a shop sign
    switched on (one keyframe: still). It fades in and out over ``fade_s``, as light does."""

    gain: float = setting(gt=0, help="Light factor at the centre: 0.6 a shadow, 1.4 a lamp")
    radius: tuple[float, float] = setting(help="Half-width and half-height of the ellipse, pixels")
    moves: tuple[tuple[float, float, float], ...] = setting(help="[t, x, y] keyframes of its centre")
    softness: float = setting(20.0, gt=0, help="Gaussian sigma of its edge, pixels")
    on_s: float = setting(0.0, ge=0, help="Composite time it starts fading in")
    off_s: float | None = setting(None, gt=0, help="Composite time it starts fading out (default: never)")
    fade_s: float = setting(1.0, ge=0, help="Seconds to fade fully in or out")

    def __post_init__(self):
        if not self.moves:
            raise ValueError("moves: give at least one [t, x, y] keyframe")
        _check_keyframes(self.moves, "moves")
        if min(self.radius) <= 0:
            raise ValueError("radius: both half-axes must be > 0")
        if self.off_s is not None and self.off_s <= self.on_s:
            raise ValueError("off_s: must be after on_s")

    def strength(self, t: float) -> float:
        """0..1: how far the patch has faded in at ``t``."""
        if self.fade_s == 0:
            return float(t >= self.on_s and (self.off_s is None or t < self.off_s))
        rise = (t - self.on_s) / self.fade_s
        fall = math.inf if self.off_s is None else (self.off_s + self.fade_s - t) / self.fade_s
        return float(np.clip(min(rise, fall), 0.0, 1.0))


@dataclass(frozen=True)
class Effects:
    """What the camera does to the whole picture, applied to every composite frame after pasting
    in this order: light (gain ramps, patches), sensor noise, JPEG. So the pasted objects darken
    with the scene under a cloud and carry the same noise and block artefacts as the street."""

    gain: tuple[tuple[float, float], ...] = setting(
        (), help="[t, gain] keyframes of the whole frame's light, linearly interpolated: auto exposure "
        "hunting, a cloud over the sun")
    patch: tuple[Patch, ...] = setting((), help="Soft shadows and lamps")
    noise: float = setting(0.0, ge=0, help="Std dev (grey levels) of fresh Gaussian sensor noise on every pixel")
    jpeg_quality: int | None = setting(None, ge=1, le=100, help="Encode and decode every frame as JPEG at "
                                       "this quality: a cheap camera's or an MJPEG link's block artefacts")

    def __post_init__(self):
        _check_keyframes(self.gain, "gain")
        if any(g <= 0 for _, g in self.gain):
            raise ValueError("gain: must be > 0")


@dataclass(frozen=True)
class Truth:
    rule: str = setting(help="Rule type whose ticket must open, e.g. object_dwell")
    zone: str = setting(help="Zone id of the camera config")
    start_s: float = setting(ge=0, help="Composite time the event starts (the object is there)")
    end_s: float | None = setting(None, ge=0, help="Composite time it ends (default: lasts to the end)")
    placement: int | None = setting(None, ge=0, help="Index of the placement this event is about: its "
                                    "pasted size goes into the truth file, for the smallest object found")

    def __post_init__(self):
        if self.end_s is not None and self.end_s < self.start_s:
            raise ValueError("end_s: must not be before start_s")


@dataclass(frozen=True)
class RecipeFile:
    """The TOML as written; :func:`load_recipe` resolves its names into a :class:`Recipe`."""

    background: Background = setting(help="The video the objects are pasted into")
    camera: Any = setting(help="Inline camera table (camera_config format, url left out) or a path to one")
    placement: tuple[Placement, ...] = setting((), help="Objects to paste, later ones on top")
    truth: tuple[Truth, ...] = setting((), help="Events a correct agent reports")
    effects: Effects = setting(factory=Effects, help="What the camera does to the whole picture")
    description: str = setting("", help="What the scenario shows, for people")
    seed: int = setting(0, help="Seed of the noise and GrabCut, so a recipe always gives the same video")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    background: Path
    start_s: float
    duration_s: float | None
    loops: int
    camera: dict  # camera-file table without url
    camera_source: Path | None  # the camera file it came from, when not inline
    placements: tuple[Placement, ...]  # image paths resolved
    truth: tuple[Truth, ...]
    effects: Effects
    seed: int

    def inputs(self) -> list[Path]:
        """Every file the composite is made from."""
        files = [self.path, self.background, *(Path(p.image) for p in self.placements if p.image)]
        return files + ([self.camera_source] if self.camera_source else [])


@dataclass(frozen=True)
class Composite:
    name: str
    video: Path
    camera_file: Path
    truth_file: Path
    camera_id: str
    fps: float
    frames: int
    duration_s: float
    truth: tuple[Truth, ...]
    build_key: str
    built: bool  # False when an up-to-date earlier build was reused


@dataclass(frozen=True)
class Sprite:
    """A placement's pixels and feathered alpha at composite scale, made once per build."""

    pixels: np.ndarray  # (h, w, 3) float32 BGR
    alpha: np.ndarray  # (h, w) float32 0..1
    shadow: np.ndarray | None  # (sh, sw) float32 0..1, centred on the bottom centre

    def size(self) -> dict:
        """The object as pasted, where alpha is at least a half: what a detector or a blob finder can
        see of it (across = width of that region, area in pixels)."""
        solid = self.alpha >= 0.5
        cols, rows = np.flatnonzero(solid.any(axis=0)), np.flatnonzero(solid.any(axis=1))
        across = int(cols[-1] - cols[0] + 1) if len(cols) else 0
        tall = int(rows[-1] - rows[0] + 1) if len(rows) else 0
        return {"across_px": across, "height_px": tall, "area_px": int(solid.sum())}


# --------------------------------------------------------------------------- recipes

def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Parse and check a recipe; footage names are fetched (cached) through ensure_footage."""
    path = Path(path).resolve()
    raw: RecipeFile = load_dataclass(RecipeFile, read_toml(path), path)
    footage: dict[str, Path] = {}

    def media(text: str, key: str) -> Path:
        if text in FOOTAGE_NAMES:
            if not footage:
                footage.update(ensure_footage())
            return footage[text]
        found = path.parent / text
        if not found.is_file():
            raise ConfigError(path, key, f"not a footage name ({', '.join(FOOTAGE_NAMES)}) nor a file: {text}")
        return found

    if isinstance(raw.camera, str):
        camera_source = path.parent / raw.camera
        camera = dict(read_toml(camera_source))
    elif isinstance(raw.camera, dict):
        camera_source, camera = None, dict(raw.camera)
    else:
        raise ConfigError(path, "camera", "expected a [camera] table or a path to a camera file")
    camera.pop("url", None)  # the composite is the camera's picture
    checked = load_dataclass(CameraFile, {**camera, "url": "composite.mp4"}, camera_source or path,
                                 "" if camera_source else "camera")
    for i, truth in enumerate(raw.truth):
        if truth.placement is not None and truth.placement >= len(raw.placement):
            raise ConfigError(path, f"truth[{i}].placement", f"no placement {truth.placement} "
                              f"(the recipe has {len(raw.placement)})")
        zone = checked.zones.get(truth.zone)
        if zone is None:
            raise ConfigError(path, f"truth[{i}].zone", f"no zone {truth.zone!r} in the camera config "
                              f"(zones: {', '.join(checked.zones) or 'none'})")
        if zone.rule.get("type") != truth.rule:
            raise ConfigError(path, f"truth[{i}].rule", f"zone {truth.zone!r} runs rule "
                              f"{zone.rule.get('type')!r}, not {truth.rule!r}")

    placements = tuple(
        dataclasses.replace(p, image=str(media(p.image, f"placement[{i}].image"))) if p.image else p
        for i, p in enumerate(raw.placement))
    return Recipe(name=path.stem, path=path, background=media(raw.background.video, "background.video"),
                  start_s=raw.background.start_s, duration_s=raw.background.duration_s,
                  loops=raw.background.loops, camera=camera, camera_source=camera_source,
                  placements=placements, truth=raw.truth, effects=raw.effects, seed=raw.seed)


def build_key(recipe: Recipe) -> str:
    """sha256 of the kit's own code, PyAV's version and every input file, so a change to any of
    them (a recipe edit, re-fetched footage, a new x264) means a rebuild and nothing else does."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(av.__version__.encode())
    for file in recipe.inputs():
        digest.update(str(file.name).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


# --------------------------------------------------------------------------- sprites

def video_frames(video: str | os.PathLike[str], indices: Iterable[int]) -> dict[int, np.ndarray]:
    """BGR frames of ``video`` at 0-based ``indices``, decoded once from the start; an index past
    the end is simply absent."""
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    if not wanted:
        return frames
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="bgr24")
            if index >= max(wanted):
                break
    return frames


def _source_picture(recipe: Recipe, placement: Placement) -> np.ndarray:
    if placement.video_frame is None:
        assert placement.image is not None  # a still placement names its image (checked at load)
        picture = cv2.imread(placement.image, cv2.IMREAD_COLOR)
        if picture is None:
            raise ConfigError(recipe.path, "placement.image", f"cannot read image {placement.image}")
        return picture
    video = Path(placement.image) if placement.image is not None else recipe.background
    frames = video_frames(video, [placement.video_frame])
    if placement.video_frame in frames:
        return frames[placement.video_frame]
    raise ConfigError(recipe.path, "placement.video_frame", f"{video.name} has no frame {placement.video_frame}")


def _object_mask(picture: np.ndarray, placement: Placement, seed: int) -> np.ndarray:
    """uint8 0/1 mask of the object in ``picture``: the box, or what GrabCut keeps of it."""
    mask = np.zeros(picture.shape[:2], np.uint8)
    x1, y1, x2, y2 = placement.box
    if placement.mask is Mask.BOX:
        mask[y1:y2, x1:x2] = 1
        return mask
    # Outside the box is surely background; inside, probably the object; `keep` boxes surely are.
    # The seeds are what rescues parts coloured like the surroundings (brown boots on brown grass).
    mask[:] = cv2.GC_BGD
    mask[y1:y2, x1:x2] = cv2.GC_PR_FGD
    for kx1, ky1, kx2, ky2 in placement.keep:
        mask[ky1:ky2, kx1:kx2] = cv2.GC_FGD
    cv2.setRNGSeed(seed)  # GrabCut initialises its colour models with k-means on cv2's RNG
    background_model, object_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # The stubs want a rect; with GC_INIT_WITH_MASK OpenCV reads none, and None says so.
    cv2.grabCut(picture, mask, None,  # type: ignore[call-overload]
                background_model, object_model, 5, cv2.GC_INIT_WITH_MASK)
    found = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    # Drop specks; keep every sizeable part (a thin gap can separate boots from legs).
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(found)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if not len(areas):
        raise ValueError(f"grabcut found no object in box {list(placement.box)}")
    big = 1 + np.flatnonzero(areas >= 0.02 * areas.sum())
    return np.isin(labels, big).astype(np.uint8)


def make_sprite(recipe: Recipe, placement: Placement) -> Sprite:
    """Cut, scale and feather one placement's object.

    Feathering erodes the mask by about two blur sigmas before blurring it, so alpha reaches ~0
    at the cut's edge: a box's border and GrabCut's fringe of the photo's background stay out,
    at the cost of a pixel or two of the object's outline. Objects too small to lose that much
    (street-scale litter) are area-averaged instead (:func:`_small_sprite`). Scaling is by height only; moving
    objects keep their size (no perspective), so keep their paths short in depth.
    """
    picture = _source_picture(recipe, placement)
    mask = _object_mask(picture, placement, recipe.seed)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        raise ValueError(f"box {list(placement.box)} lies outside the {picture.shape[1]}x{picture.shape[0]} source")
    pixels, mask = picture[y:y + h, x:x + w], mask[y:y + h, x:x + w].astype(np.float32)
    scale = placement.height_px / h
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    sigma = max(0.7, placement.height_px / 150)
    if math.ceil(2 * sigma) > min(size) // 4:
        pixels, alpha = _small_sprite(pixels, mask, size, fringe=scale < 0.5)
    else:
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
        shrink = math.ceil(2 * sigma)
        padded = cv2.copyMakeBorder(mask, shrink, shrink, shrink, shrink, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((2 * shrink + 1, 2 * shrink + 1), np.uint8))
        alpha = cv2.GaussianBlur(eroded, (0, 0), sigma)[shrink:-shrink, shrink:-shrink]

    shadow: np.ndarray | None = None
    if placement.shadow:
        # Flat like a ground contact shadow seen from above and behind: as wide as the object
        # and a quarter as deep, blurred so it has no edge.
        half_w, half_h = max(2, round(0.55 * size[0])), max(2, round(0.14 * size[0]))
        pad = 2 * half_h
        shadow = np.zeros((2 * (half_h + pad) + 1, 2 * (half_w + pad) + 1), np.float32)
        cv2.ellipse(shadow, (half_w + pad, half_h + pad), (half_w, half_h), 0, 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, half_h / 2))
    return Sprite(pixels.astype(np.float32), alpha.astype(np.float32), shadow)


def _small_sprite(pixels: np.ndarray, mask: np.ndarray, size: tuple[int, int],
                  fringe: bool) -> tuple[np.ndarray, np.ndarray]:
    """A street-scale object of a few pixels, scaled down the way a camera's pixels see it.

    Eroding by two blur sigmas at composite scale, as for large objects, would leave a 2-5 px
    remnant of a 9-15 px bottle or bag. Here GrabCut's fringe is dropped where it lives, at
    source scale (SMALL_FRINGE_SRC_PX; only with ``fringe``, for sources much larger than the
    sprite: vtest's own paper, pasted near its own scale, would lose pixels it needs, and its
    fringe is the same ground), and the object is area-averaged with premultiplied alpha: each
    composite pixel gets the share of it the object covers, and only the object's
    colour, never the photo's old background, as a sensor pixel straddling its edge would."""
    kernel = np.ones((2 * SMALL_FRINGE_SRC_PX + 1,) * 2, np.uint8)
    mask = cv2.erode(mask, kernel) if fringe and min(mask.shape) > 4 * SMALL_FRINGE_SRC_PX else mask
    alpha = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
    colour = cv2.resize(pixels.astype(np.float32) * mask[..., None], size, interpolation=cv2.INTER_AREA)
    colour = colour / np.maximum(alpha, 1e-3)[..., None]
    # The lens and the codec soften every edge by about a pixel.
    return colour.clip(0, 255), cv2.GaussianBlur(alpha, (0, 0), SMALL_EDGE_SIGMA_PX)


def _region(frame: np.ndarray, left: int, top: int, height: int, width: int):
    """The frame slice and the matching slice of a (height, width) patch placed at left, top;
    None when they do not overlap."""
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, fw), min(top + height, fh)
    if x0 >= x1 or y0 >= y1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def paste(frame: np.ndarray, sprite: Sprite, bottom_centre: tuple[float, float], noise: float,
          rng: np.random.Generator, movers: np.ndarray | None = None) -> None:
    """Blend ``sprite`` into ``frame`` (BGR uint8, in place) with its bottom centre at the point.

    ``movers`` (frame-sized float32 0..1, see :func:`mover_mask`) is where something stands in
    front of the object: neither it nor its shadow is drawn there."""
    cx, by = bottom_centre
    if sprite.shadow is not None:
        sh, sw = sprite.shadow.shape
        # The shadow's centre sits a little above the bottom, so the feet stand in it.
        where = _region(frame, round(cx - sw / 2), round(by - sh / 2 - sh / 8), sh, sw)
        if where is not None:
            (fy, fx), (sy, sx) = where
            shade = sprite.shadow[sy, sx] if movers is None else sprite.shadow[sy, sx] * (1 - movers[fy, fx])
            light = 1.0 - SHADOW_DARKENING * shade[..., None]
            frame[fy, fx] = np.clip(frame[fy, fx] * light + 0.5, 0, 255).astype(np.uint8)
    h, w = sprite.alpha.shape
    where = _region(frame, round(cx - w / 2), round(by - h), h, w)
    if where is None:
        return
    (fy, fx), (sy, sx) = where
    pixels = sprite.pixels[sy, sx]
    if noise > 0:
        pixels = pixels + rng.normal(0.0, noise, pixels.shape).astype(np.float32)
    alpha = sprite.alpha[sy, sx] if movers is None else sprite.alpha[sy, sx] * (1 - movers[fy, fx])
    alpha = alpha[..., None]
    frame[fy, fx] = np.clip(frame[fy, fx] * (1 - alpha) + pixels * alpha + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- scene and camera

def median_background(video: Path) -> np.ndarray:
    """The per-pixel median of MEDIAN_SAMPLES frames spread over the whole video (float32 BGR): the
    street without its walkers, who are at any one spot in only a few of the samples. BGR uint8."""
    with av.open(str(video)) as container:
        total = container.streams.video[0].frames
        wanted = set(np.linspace(0, max(total - 1, 0), MEDIAN_SAMPLES).round().astype(int).tolist())
        samples: list[np.ndarray] = [frame.to_ndarray(format="bgr24") for index, frame in enumerate(container.decode(video=0))
                   if index in wanted]
    return np.median(np.stack(samples), axis=0).astype(np.uint8)


def mover_mask(frame: np.ndarray, median: np.ndarray) -> np.ndarray:
    """Where the background frame shows a real mover (float32 0..1, frame-sized): pixels more than
    MOVER_LEVEL from the median, specks opened away, the body closed and grown by a few pixels (a
    walker's outline and motion blur differ less than its middle), edges softened like a cut-out."""
    blue, green, red = cv2.split(cv2.absdiff(frame, median))
    moving: np.ndarray = (cv2.max(cv2.max(blue, green), red) > MOVER_LEVEL).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    moving = cv2.dilate(cv2.morphologyEx(moving, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8)),
                        np.ones((5, 5), np.uint8))
    return cv2.GaussianBlur(moving.astype(np.float32), (0, 0), 1.0)


def patch_shape(patch: Patch) -> np.ndarray:
    """The patch's soft ellipse (float32 0..1), centred, with room for its blurred edge."""
    rx, ry = patch.radius
    pad = math.ceil(3 * patch.softness)
    shape = np.zeros((2 * (math.ceil(ry) + pad) + 1, 2 * (math.ceil(rx) + pad) + 1), np.float32)
    centre = (shape.shape[1] // 2, shape.shape[0] // 2)
    cv2.ellipse(shape, centre, (round(rx), round(ry)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(shape, (0, 0), patch.softness)


def apply_effects(frame: np.ndarray, effects: Effects, shapes: list[np.ndarray], t: float,
                  rng: np.random.Generator) -> np.ndarray:
    """The camera's view of ``frame`` (BGR uint8) at composite time ``t``: a new uint8 array with
    the recipe's light, noise and JPEG applied (``shapes``: :func:`patch_shape` of each patch)."""
    if not (effects.gain or effects.patch or effects.noise or effects.jpeg_quality):
        return frame
    gain = _interpolate(effects.gain, t)[0] if effects.gain else 1.0
    light = np.full(frame.shape[:2], gain, np.float32)
    for patch, shape in zip(effects.patch, shapes):
        strength = patch.strength(t)
        if strength == 0:
            continue
        cx, cy = _interpolate(patch.moves, t)
        sh, sw = shape.shape
        where = _region(frame, round(cx - sw / 2), round(cy - sh / 2), sh, sw)
        if where is not None:
            (fy, fx), (sy, sx) = where
            light[fy, fx] *= 1 + (patch.gain - 1) * strength * shape[sy, sx]
    seen = frame * light[..., None] if gain != 1 or effects.patch else frame.astype(np.float32)
    if effects.noise:
        seen += effects.noise * rng.standard_normal(seen.shape, dtype=np.float32)
    seen = np.clip(seen + 0.5, 0, 255).astype(np.uint8)
    if effects.jpeg_quality:
        _ok, data = cv2.imencode(".jpg", seen, [cv2.IMWRITE_JPEG_QUALITY, effects.jpeg_quality])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert decoded is not None  # the JPEG just encoded
        return decoded
    return seen


# --------------------------------------------------------------------------- building

def _frames_forward(container: av.container.InputContainer, first: int, last: int | None) -> Iterator[np.ndarray]:
    container.seek(0)
    for index, frame in enumerate(container.decode(video=0)):
        if last is not None and index >= last:
            return
        if index >= first:
            yield frame.to_ndarray(format="bgr24")


def _frames_backward(container: av.container.InputContainer, first: int, last: int,
                     fps: Fraction) -> Iterator[np.ndarray]:
    """Frames last-1 down to first, decoded REVERSE_CHUNK at a time after a seek to the keyframe
    before each chunk: a backwards pass never holds more than one chunk in memory."""
    stream = container.streams.video[0]
    time_base = stream.time_base
    assert time_base is not None  # a demuxed stream has one
    end = last
    while end > first:
        start = max(first, end - REVERSE_CHUNK)
        container.seek(int(Fraction(start) / fps / time_base), stream=stream, backward=True)
        chunk = []
        for frame in container.decode(stream):
            assert frame.pts is not None  # decoded from a file, every frame has one
            index = round(frame.pts * time_base * fps)
            if index >= end:
                break
            if index >= start:
                chunk.append(frame.to_ndarray(format="bgr24"))
        if len(chunk) != end - start:
            raise ValueError(f"cannot play {container.name} backwards: frames {start}-{end} decoded as {len(chunk)}")
        yield from reversed(chunk)
        end = start


def _background_frames(recipe: Recipe, fps: Fraction) -> Iterator[np.ndarray]:
    """The trimmed background's frames as BGR arrays, ``loops`` passes alternately forwards and
    backwards (constant frame rate assumed, as in all the footage: trims count frames rather than
    trusting timestamps)."""
    first = round(recipe.start_s * fps)
    last = None if recipe.duration_s is None else first + round(recipe.duration_s * fps)
    with av.open(str(recipe.background)) as container:
        if last is None:
            last = container.streams.video[0].frames or None
        if recipe.loops > 1 and last is None:
            raise ConfigError(recipe.path, "background.loops", "the video does not say how many frames it has; "
                              "give duration_s")
        for turn in range(recipe.loops):
            if turn % 2:
                assert last is not None  # more than one loop needs it, checked above
                yield from _frames_backward(container, first, last, fps)
            else:
                yield from _frames_forward(container, first, last)


def camera_toml(table: dict, prefix: str = "") -> str:
    """TOML for a camera table: scalars and arrays first, then sub-tables ([zones.x.rule] style)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):  # inside a list, e.g. a zone's schedule windows: inline tables
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v, ensure_ascii=False)  # a JSON string or number is a TOML one too

    text = "".join(f"{k} = {value(v)}\n" for k, v in table.items() if not isinstance(v, dict))
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            # A table holding only tables needs no header of its own: [zones.lawn] implies [zones].
            header = f"\n[{name}]\n" if not v or any(not isinstance(x, dict) for x in v.values()) else ""
            text += header + camera_toml(v, name)
    return text


def _part(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place; per process, so two builds of
    one scenario at once (two evaluations sharing .cache/scenarios) do not write into each other."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def _write_atomically(path: Path, data: bytes | str) -> None:
    part = _part(path)
    part.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(part, path)


def _encode(recipe: Recipe, sprites: list, video: Path, fps: Fraction, width: int, height: int) -> int:
    """Render the composite into ``video`` (written whole or not at all); the number of frames."""
    shapes = [patch_shape(patch) for patch in recipe.effects.patch]
    median = median_background(recipe.background) if any(p.behind_movers for p in recipe.placements) else None
    rng = np.random.default_rng(recipe.seed)
    gop = max(1, round(GOP_S * fps))
    part = _part(video)
    frames = 0
    try:
        with av.open(str(part), "w", format="mp4", options={"movflags": "+faststart"}) as output:
            # A keyframe exactly every GOP_S seconds: clips cut from the composite and seeks in it
            # behave like on the demo footage.
            stream = add_fixed_gop_stream(output, fps, gop, width, height, CRF)
            for image in _background_frames(recipe, fps):
                t = float(frames / fps)
                # From the untouched background: pasted objects are not movers of the video's own.
                hidden = any(p.behind_movers and p.visible(t) for p in recipe.placements)
                movers = mover_mask(image, median) if hidden and median is not None else None
                for placement, sprite in zip(recipe.placements, sprites):
                    if placement.visible(t):
                        paste(image, sprite, placement.position(t), placement.noise, rng,
                              movers if placement.behind_movers else None)
                image = apply_effects(image, recipe.effects, shapes, t, rng)
                frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
                frame.pts = frames
                output.mux(stream.encode(frame))
                frames += 1
            if frames == 0:
                raise ConfigError(recipe.path, "background",
                                  f"no frames left after trimming {recipe.background.name}")
            output.mux(stream.encode(None))
        os.replace(part, video)
    finally:
        part.unlink(missing_ok=True)
    return frames


def build(recipe: Recipe, out_dir: str | os.PathLike[str] = DEFAULT_OUT) -> Composite:
    """Write the composite, its camera file and its truth file into ``out_dir``.

    The truth file is written last and carries the build key, so a half-finished build is never
    mistaken for a finished one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = build_key(recipe)
    video = out_dir / f"{recipe.name}.mp4"
    with av.open(str(recipe.background)) as container:
        source = container.streams.video[0]
        assert source.average_rate is not None, f"{recipe.background}: no frame rate"
        fps, width, height = Fraction(source.average_rate), source.width, source.height
    sprites = [make_sprite(recipe, p) for p in recipe.placements]
    frames = _encode(recipe, sprites, video, fps, width, height)

    camera_file = out_dir / f"{recipe.name}.camera.toml"
    _write_atomically(camera_file, f"# Built by tools/scenario_kit.py from {recipe.path.name}; do not edit.\n"
                      + camera_toml({"url": video.name, **recipe.camera}))
    done = {
        "scenario": recipe.name, "recipe": str(recipe.path), "build_key": key, "video": video.name,
        "camera_file": camera_file.name, "camera_id": recipe.camera["id"], "fps": float(fps), "frames": frames,
        "duration_s": float(frames / fps),
        "truth": [dataclasses.asdict(t) for t in recipe.truth],
        # Each placement's size as pasted, so a report can say how small an object was still found.
        "placements": [sprite.size() for sprite in sprites],
    }
    _write_atomically(out_dir / f"{recipe.name}.truth.json", json.dumps(done, indent=1) + "\n")
    return _composite(recipe, out_dir, done, built=True)


def _composite(recipe: Recipe, out_dir: Path, done: dict, built: bool) -> Composite:
    return Composite(
        name=recipe.name, video=out_dir / done["video"], camera_file=out_dir / done["camera_file"],
        truth_file=out_dir / f"{recipe.name}.truth.json", camera_id=done["camera_id"], fps=done["fps"],
        frames=done["frames"], duration_s=done["duration_s"], truth=recipe.truth, build_key=done["build_key"],
        built=built)


def ensure_built(recipe: Recipe, out_dir: str | os.PathLike[str] = DEFAULT_OUT) -> Composite:
    """The composite of ``recipe`` in ``out_dir``: reused when its build key matches, else built."""
    out_dir = Path(out_dir)
    try:
        done = json.loads((out_dir / f"{recipe.name}.truth.json").read_text())
    except (OSError, ValueError):
        done = {}
    if (done.get("build_key") == build_key(recipe) and (out_dir / done["video"]).is_file()
            and (out_dir / done["camera_file"]).is_file()):
        return _composite(recipe, out_dir, done, built=False)
    return build(recipe, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", type=Path, help="scenario recipe TOML files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        recipes = [load_recipe(path) for path in args.recipes]
        for recipe in recipes:
            started = time.monotonic()
            composite = build(recipe, args.out)
            print(f"{composite.video}: {composite.frames} frames at {composite.fps:g} fps "
                  f"({composite.duration_s:g} s), {len(composite.truth)} truth events, "
                  f"built in {time.monotonic() - started:.1f} s")
    except (ConfigError, ValueError) as exc:
        print(f"scenario_kit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
