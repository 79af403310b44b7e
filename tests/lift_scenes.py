"""Lift-car composites built in the test, from real pixels, for the lift_ebike fallback.

There is no lift footage among the registries' files, so a car is stood in for by a real floor
picture (vtest's lawn or tarmac, the white porch boards of darknet's dog.jpg) filling a frame,
with the car floor a zone over most of it. Real cut-outs are pasted in with the scenario kit's
own cutting and feathering (tools/scenario_kit.py ``make_sprite``/``paste``): the dog.jpg bicycle
as the e-bike, the person.jpg man as the rider, dog.jpg's dog as a pram-sized object, vtest's bag
as a suitcase-sized one. Sizes are in metres of the car floor (1.6 m along its long side), so a
scene says what is large or long in the terms the rule's defaults are written in.

What is not real: the view. The cut-outs are side views, only turned in the picture's plane; a
ceiling fisheye sees an e-bike from above and bends it. People's boxes come from where the kit
put them (what a detector would return), with misses chosen by the scene (a ceiling view makes
COCO detectors miss people): the rule's logic runs on real pixels, not NanoDet's recall.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from tools.fetch_footage import ensure_footage
from tools.scenario_kit import Sprite, load_recipe, make_sprite, paste, video_frames

FRAME_W, FRAME_H = 480, 400
# The car floor as the camera sees it: 400 x 340 px; its long side stands for 1.6 m.
FLOOR = np.array([[40, 30], [440, 30], [440, 370], [40, 370]], np.float32)
PX_PER_M = 400 / 1.6
DOOR_Y = 420  # below the frame: where things come in from

# (footage or "video:frame", source box, GrabCut seeds): what the kit cuts out.
SOURCES = {
    "bicycle": ("dog.jpg", (120, 125, 570, 425), ()),
    "person": ("person.jpg", (186, 92, 282, 380), ((213, 318, 245, 366),)),
    "dog": ("dog.jpg", (130, 215, 312, 540), ((200, 300, 260, 420),)),
    "bag": ("vtest.mp4:0", (401, 163, 437, 182), ()),
}
FLOORS = {  # (footage, x1, y1, x2, y2) of a still, empty patch
    "lawn": ("vtest.mp4:0", 0, 420, 380, 576),
    "tarmac": ("vtest.mp4:0", 450, 250, 640, 400),
    "porch": ("dog.jpg", 330, 430, 700, 576),
}


@cache
def _picture(name: str) -> np.ndarray:
    footage = ensure_footage()
    if ":" in name:
        video, index = name.split(":")
        return video_frames(footage[video], [int(index)])[int(index)]
    picture = cv2.imread(str(footage[name]), cv2.IMREAD_COLOR)
    if picture is None:
        raise FileNotFoundError(f"cannot read footage {footage[name]}")
    return picture


@cache
def cutout(what: str, height_px: int | None = None) -> Sprite:
    """The kit's sprite of ``what``, ``height_px`` tall (default: its source size, scaled per
    scene): cut by the kit from a one-placement recipe, so it is exactly what the kit's
    composites paste."""
    name, box, keep = SOURCES[what]
    video, _, index = name.partition(":")
    source = f"video_frame = {index}" if index else f'image = "{name}"'
    recipe_text = f"""
[background]
video = "{video if index else 'vtest.mp4'}"
[camera]
id = "lift-scene"
[camera.location]
lat = 31.2304
lon = 121.4737
grid_code = "310101001001"
[[placement]]
{source}
box = {list(box)}
mask = "grabcut"
keep = {[list(k) for k in keep]}
at = [0, 0]
height_px = {height_px or box[3] - box[1]}
shadow = {'true' if what == 'person' else 'false'}
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{what}.toml"
        path.write_text(recipe_text, encoding="utf-8")
        recipe = load_recipe(path)
        return make_sprite(recipe, recipe.placements[0])


def sprite(what: str, length_m: float, angle_deg: float = 0.0) -> Sprite:
    """``what`` scaled so its longer side is ``length_m`` of the car, turned by ``angle_deg``."""
    base = cutout(what)
    h, w = base.alpha.shape
    scale = length_m * PX_PER_M / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pixels = cv2.resize(base.pixels, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    alpha = cv2.resize(base.alpha, size, interpolation=cv2.INTER_LINEAR)
    shadow = None if base.shadow is None else cv2.resize(
        base.shadow, (max(2, round(base.shadow.shape[1] * scale)), max(2, round(base.shadow.shape[0] * scale))))
    if angle_deg:
        # Turn about the centre into a canvas big enough for the turned sprite.
        rad = math.radians(angle_deg)
        cw = round(abs(size[0] * math.cos(rad)) + abs(size[1] * math.sin(rad)))
        ch = round(abs(size[0] * math.sin(rad)) + abs(size[1] * math.cos(rad)))
        turn = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), angle_deg, 1.0)
        turn[:, 2] += [(cw - size[0]) / 2, (ch - size[1]) / 2]
        pixels = cv2.warpAffine(pixels, turn, (cw, ch), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(alpha, turn, (cw, ch), flags=cv2.INTER_LINEAR)
        shadow = None
    return Sprite(pixels, alpha, shadow)


def floor_picture(floor: str, gain: float) -> np.ndarray:
    name, x1, y1, x2, y2 = FLOORS[floor]
    patch = _picture(name)[y1:y2, x1:x2]
    picture = cv2.resize(patch, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(picture * gain, 0, 255).astype(np.uint8)


def box_of(s: Sprite, bottom_centre) -> tuple[float, float, float, float]:
    """Where ``paste`` puts the sprite: its box in the frame."""
    h, w = s.alpha.shape
    cx, by = bottom_centre
    return (round(cx - w / 2), round(by - h), round(cx - w / 2) + w, round(by))


@dataclass
class Actor:
    sprite: Sprite
    path: list  # per frame: bottom centre (x, y), or None when not in the picture
    is_person: bool = False


def render(floor: np.ndarray, actors: list[Actor], frames: int, seed: int, exposure: list[float]):
    """Per frame: (image, person boxes). Fresh sensor noise (std 2) on every frame, as a camera gives."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(frames):
        frame = floor.copy()
        people = []
        for actor in actors:
            at = actor.path[i]
            if at is None:
                continue
            paste(frame, actor.sprite, at, 2.0, rng)
            if actor.is_person:
                people.append(box_of(actor.sprite, at))
        noisy = frame.astype(np.float32) * exposure[i] + rng.normal(0, 2, frame.shape)
        out.append((np.clip(noisy, 0, 255).astype(np.uint8), people))
    return out


FRAMES = 12  # as the real ceiling-camera sequence: the empty car in the first frame only
STEP_S = 0.5  # analysis at 2 fps
OBJECTS = {"ebike": ("bicycle", (1.6, 1.8)), "pram": ("dog", (0.8, 1.0)), "suitcase": ("bag", (0.4, 0.7))}


@dataclass
class Scene:
    what: str  # "ebike", "pram", "suitcase" or "person" (alone)
    frames: list  # [(image, person boxes the detector returned)]
    truth_people: list  # per frame, the boxes of the people pasted in (misses included)
    floor: str


def scene(what: str, seed: int, missed: float = 0.3) -> Scene:
    """A person comes in through the door (the picture's bottom edge) in frames 1-3, with ``what``
    beside them unless it is "person"; both then stay, the person shifting once more in frame 5.
    Floor, light, sizes, angle and place vary with ``seed``; the detector misses the person in
    about ``missed`` of the frames (never more than 3 in a row: 1.5 s)."""
    rng = np.random.default_rng(seed)
    floor_name = list(FLOORS)[seed % len(FLOORS)]
    floor = floor_picture(floor_name, rng.uniform(0.8, 1.2))
    person = sprite("person", rng.uniform(1.2, 1.5))
    side = rng.choice([-1, 1])
    centre = np.array([240 + rng.uniform(-40, 40), 200 + rng.uniform(-30, 30)])
    actors = []
    if what != "person":
        source, (low, high) = OBJECTS[what]
        thing = sprite(source, rng.uniform(low, high), side * rng.uniform(5, 35))
        h, w = thing.alpha.shape
        rest = (centre[0], centre[1] + h / 2)
        actors.append(Actor(thing, _walk_in(rest)))
        # Beside the object's end, but in the car: an e-bike spans most of it, so they overlap.
        person_at = (float(np.clip(centre[0] + side * (w / 2 + 10), 80, 400)), min(centre[1] + 160, 390))
    else:
        person_at = (centre[0], min(centre[1] + 160, 390))
    path = _walk_in(person_at)
    path[5] = (path[5][0] - side * 25, path[5][1] - 10)  # a step aside while the doors close
    path[6:] = [path[5]] * (FRAMES - 6)
    actors.append(Actor(person, path, is_person=True))
    exposure = [1.0] + [rng.uniform(0.9, 1.1)] * (FRAMES - 1)  # auto exposure once someone is in
    rendered = render(floor, actors, FRAMES, seed, exposure)
    misses, run = [], 0
    for _ in range(FRAMES):
        miss = run < 3 and rng.random() < missed
        run = run + 1 if miss else 0
        misses.append(miss)
    frames = [(image, [] if miss else boxes) for (image, boxes), miss in zip(rendered, misses)]
    return Scene(what, frames, [boxes for _, boxes in rendered], floor_name)


def _walk_in(rest) -> list:
    """None in frame 0, then from the door to ``rest`` over frames 1-3, then still."""
    x, y = rest
    door = (x, y + (DOOR_Y - 200))
    path: list[tuple[float, float] | None] = [None]
    for i in (1, 2, 3):
        f = i / 3
        path.append((door[0] + (x - door[0]) * f, door[1] + (y - door[1]) * f))
    return path + [rest] * (FRAMES - 4)
