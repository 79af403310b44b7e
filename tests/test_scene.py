"""The static new-object model on real footage: vtest (PETS 2009, a fixed elevated camera) at
2 fps, with real objects pasted into its real frames.

The composites are built here from real pixels: the yellow plastic item that lies on vtest's grass
(x 65-165, y 493-531 of every frame) is cut out with an alpha mask from its colour difference to
the grass and pasted elsewhere on the grass, where nobody walks in the 80 s of the clip (measured
from the detector's person boxes and a MOG2 motion map over the whole clip: the left edge at x
15-115, y 400-438); a man cut out of darknet's person.jpg (GrabCut) stands on the lawn at the lower right.
The real people of the clip are masked with the bundled detector's boxes, as the agent does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import av
import cv2
import numpy as np
import pytest

from agent import scene
from agent.detect import load_detector
from agent.scene import SceneModel, SceneParams
from agent.track import box_iou
from tests import lift_scenes
from tests.helpers import NANODET_MANIFEST
from tools.scenario_kit import Effects, Patch, apply_effects, paste, patch_shape

STEP = 0.5  # seconds between analysed frames: vtest's 10 fps sampled at 2 fps
MASKED_CLASSES = {"person", "bicycle", "car", "motorcycle", "bus", "truck"}
ITEM_SOURCE = (65, 493, 165, 531)  # x0, y0, x1, y1 of the plastic item in every vtest frame
ITEM_AT = (15, 400)  # where its copy is pasted
PLASTIC = (60, 485, 170, 535)  # around it, with its soft edge
PERSON_BOX = (600, 430, 640, 550)
# These tests measure the model's mechanisms on a large item, whole frame, with the settings they
# were first measured with; the defaults (5 s, 12 px: litter-sized) have tests of their own below.
PARAMS = SceneParams(min_static_s=10.0, min_area_px=400.0)  # where the pasted person stands: feet on the lawn


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]  # full-resolution BGR, one per STEP
    boxes: list[np.ndarray]  # (N, 4) people and vehicles the detector sees in each frame
    item: np.ndarray  # the plastic item, float32 BGR
    item_alpha: np.ndarray  # (h, w, 1) float32 in 0..1
    person: np.ndarray  # a person scaled to PERSON_BOX, float32 BGR
    person_alpha: np.ndarray  # (h, w, 1) float32 in 0..1


@pytest.fixture(scope="module")
def clip(footage) -> Clip:
    detector = load_detector(NANODET_MANIFEST, threads=2, min_score=0.35)
    frames, boxes = [], []
    with av.open(str(footage["vtest.avi"])) as container:
        for index, picture in enumerate(container.decode(video=0)):
            if index % 5:
                continue
            image = picture.to_ndarray(format="bgr24")
            found = detector.detect(image)
            frames.append(image)
            boxes.append(found[found.of_classes(MASKED_CLASSES)].xyxy)

    x0, y0, x1, y1 = ITEM_SOURCE
    item = frames[0][y0:y1, x0:x1].astype(np.float32)
    grass = np.median(frames[0][y0 - 23:y0 - 3, x0:x1].reshape(-1, 3), axis=0)
    alpha = (np.abs(item - grass).max(axis=2) > 45).astype(np.float32)
    # A pixel of margin, then a soft edge, as a real object's outline blends into the grass.
    alpha = cv2.GaussianBlur(cv2.dilate(alpha, np.ones((3, 3), np.uint8)), (5, 5), 0)[..., None]

    # The man of person.jpg (detector box x 187-279, y 100-376), cut out by GrabCut from that box.
    photo = cv2.imread(str(footage["person.jpg"]))[80:400, 160:310]
    cut = np.zeros(photo.shape[:2], np.uint8)
    cv2.grabCut(photo, cut, (27, 18, 94, 282), np.zeros((1, 65)), np.zeros((1, 65)), 5,
                cv2.GC_INIT_WITH_RECT)
    size = (PERSON_BOX[2] - PERSON_BOX[0], PERSON_BOX[3] - PERSON_BOX[1])
    person = cv2.resize(photo[18:300, 27:121], size, interpolation=cv2.INTER_AREA).astype(np.float32)
    person_alpha = np.isin(cut[18:300, 27:121], [cv2.GC_FGD, cv2.GC_PR_FGD]).astype(np.float32)
    person_alpha = cv2.resize(person_alpha, size, interpolation=cv2.INTER_AREA)[..., None]
    return Clip(frames, boxes, item, alpha, person, person_alpha)


def pasted(image: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """A copy of ``image`` with ``patch`` blended in at (x0, y0)."""
    out = image.copy()
    h, w = patch.shape[:2]
    region = out[y0:y0 + h, x0:x0 + w].astype(np.float32)
    out[y0:y0 + h, x0:x0 + w] = np.round(alpha * patch + (1 - alpha) * region).astype(np.uint8)
    return out


def with_item(clip: Clip, image: np.ndarray) -> np.ndarray:
    return pasted(image, clip.item, clip.item_alpha, *ITEM_AT)


def with_person(clip: Clip, image: np.ndarray, x0: int, y0: int) -> np.ndarray:
    return pasted(image, clip.person, clip.person_alpha, x0, y0)


def item_box() -> np.ndarray:
    w, h = ITEM_SOURCE[2] - ITEM_SOURCE[0], ITEM_SOURCE[3] - ITEM_SOURCE[1]
    return np.array([ITEM_AT[0], ITEM_AT[1], ITEM_AT[0] + w, ITEM_AT[1] + h], np.float64)


def run(clip: Clip, edit=None, params: SceneParams = PARAMS, model: SceneModel | None = None):
    """Feed the clip; ``edit(ts, image) -> (image, extra mask boxes)`` builds the composite.
    Returns [(ts, blobs)] for every frame."""
    model = model or SceneModel(params)
    out = []
    for k, (image, boxes) in enumerate(zip(clip.frames, clip.boxes)):
        ts = k * STEP
        if edit is not None:
            image, extra = edit(ts, image)
            boxes = np.concatenate([boxes, np.array(extra, np.float32).reshape(-1, 4)])
        out.append((ts, model.update(ts, image, boxes)))
    return out


def overlapping(results, box) -> list[tuple[float, object]]:
    """(ts, blob) for every blob that overlaps ``box``."""
    box = np.asarray(box, np.float64)[None]
    return [(ts, b) for ts, blobs in results for b in blobs
            if box_iou(box, b.xyxy[None].astype(np.float64))[0, 0] > 0]


T0, T1 = 20.0, 60.0  # the pasted object arrives and is taken away


def test_a_pasted_object_appears_after_min_static_s_and_clears_when_taken_away(clip):
    params = PARAMS
    results = run(clip, lambda ts, img: (with_item(clip, img) if T0 <= ts < T1 else img, []), params)
    seen = overlapping(results, item_box())
    appeared, last = seen[0][0], seen[-1][0]
    # Measured: appears at 31.5 s = T0 + 11.5 (1.5 s for the fast model to take the item in, then
    # min_static_s); gone at the first frame without it (last seen 59.5 s).
    assert T0 + params.min_static_s <= appeared <= T0 + params.min_static_s + 3, appeared
    assert T1 - STEP <= last < T1 + 10, last
    assert [ts for ts, _ in seen] == [ts for ts, _ in results if appeared <= ts <= last], "no gaps"
    assert {b.id for _, b in seen} == {1}, "one object, one id"
    blob = seen[-1][1]
    assert box_iou(item_box()[None], blob.xyxy[None].astype(np.float64))[0, 0] > 0.6, blob.xyxy
    # Measured: first_seen 20.0, static_since 20.5; area 1619 px for an item of 1790 px (alpha
    # sum, soft edge included): the faint edge stays under the foreground level.
    assert blob.first_seen == T0 and T0 <= blob.static_since <= T0 + 3
    assert 0.8 < blob.area_px / clip.item_alpha.sum() < 1.5
    assert all(len(blobs) == len([b for t, b in seen if t == ts]) for ts, blobs in results), \
        "nothing else in the scene became a blob"


def test_without_a_pasted_object_there_is_no_blob(clip):
    # The two plastic items lying on the grass from the first frame are background; the people
    # walking and standing are masked by their boxes or moving. Measured: no blob in 80 s.
    # Without the detector's boxes, a man standing on the path at x 375-412 from 3 to 15 s is
    # copied into the background during the warm-up and leaves a ghost blob from 52.5 s on.
    results = run(clip)
    assert [(ts, b.xyxy.tolist()) for ts, blobs in results for b in blobs] == []


@pytest.mark.parametrize("change", [0.2, -0.2])
def test_a_brightness_ramp_over_a_minute_gives_no_blob(clip, change):
    def ramp(ts, img):
        return cv2.convertScaleAbs(img, alpha=1 + change * np.clip((ts - 10) / 60, 0, 1)), []

    # The ramp is far beyond the foreground level: at its end most pixels differ by more than it.
    # Measured without the gain normalisation: blobs from 37 s (-20%) and 46.5 s (+20%).
    end, _ = ramp(70.0, clip.frames[140])
    moved = cv2.absdiff(end, clip.frames[140]).max(axis=2) > SceneParams().foreground_level
    assert moved.mean() > 0.3
    assert [(ts, b.xyxy.tolist()) for ts, blobs in run(clip, ramp) for b in blobs] == []


def test_a_person_standing_still_is_not_a_blob_and_leaves_no_ghost(clip):
    """Masked by its box, a person standing for 40 s is neither counted nor learned into the slow
    background: when it leaves, the lawn is still the background and nothing appears there."""
    x0, y0 = PERSON_BOX[:2]

    def standing(masked):
        def edit(ts, img):
            if T0 <= ts < T1:
                return with_person(clip, img, x0, y0), [PERSON_BOX] if masked else []
            return img, []
        return edit

    # Run with a slow model of 30 s: the default 300 s would learn too little of the person in
    # 40 s to leave a visible ghost even if it learned under the box; this one would, from
    # 71.5 s (checked by patching the model to learn under boxes).
    assert overlapping(run(clip, standing(masked=True), dataclasses.replace(PARAMS, slow_tau_s=30.0)), PERSON_BOX) == []
    # The same composite without the box: the person is a static blob (the mask does the work).
    unmasked = overlapping(run(clip, standing(masked=False)), PERSON_BOX)
    assert unmasked and unmasked[0][0] <= T0 + PARAMS.min_static_s + 3


def test_an_object_taken_away_that_was_there_from_the_start_leaves_no_ghost(clip):
    """The item lies on the lawn from the first frame (it is background) and is taken away at
    30 s. The uncovered lawn differs from the background and is still: without the edge test it
    is reported as a new object for as long as the background remembers the item; with it, the
    outline is found to be the background's edge, not the picture's, and it is learned at once."""
    def removed(ts, img):
        return (with_item(clip, img) if ts < 30.0 else img), []

    def ghost_seen(params):
        return [ts for ts, _ in overlapping(run(clip, removed, params), item_box())]

    assert ghost_seen(PARAMS) == []
    blind = ghost_seen(dataclasses.replace(PARAMS, ghost_edge_ratio=1e9))
    assert blind and blind[-1] - blind[0] >= 20, "the test has no teeth: no ghost without the edge test"


def test_a_passer_by_over_the_object_keeps_its_blob_and_id(clip):
    """An undetected person (no mask) walks across the object: each pixel changes for the second
    the person covers it, which costs it a second of its count but leaves the blob whole. Were a
    change to restart the count, the covered stripe would drop out for min_static_s and split
    or shrink the blob (checked: then this test fails)."""
    def edit(ts, img):
        if T0 <= ts < T1:
            img = with_item(clip, img)
        if 40 <= ts < 44:  # left to right at 20 px a frame, the body over the whole item
            img = with_person(clip, img, int(ITEM_AT[0] + (ts - 40) * 40), ITEM_AT[1] - 60)
        return img, []

    seen = overlapping(run(clip, edit), item_box())
    during = [(ts, b) for ts, b in seen if 32 <= ts < T1]
    assert [ts for ts, _ in during] == list(np.arange(32.0, T1, STEP)), "one blob, every frame"
    assert {b.id for _, b in seen} == {1}
    worst = min(box_iou(item_box()[None], b.xyxy[None].astype(np.float64))[0, 0] for _, b in during)
    assert worst > 0.6, worst


def test_absorb_after_s_and_absorb_learn_the_object_into_the_background(clip):
    params = dataclasses.replace(PARAMS, absorb_after_s=20.0)
    scene = lambda ts, img: (with_item(clip, img) if ts >= T0 else img, [])  # noqa: E731
    seen = overlapping(run(clip, scene, params), item_box())
    # Static since 20.5 s: reported from 31.5 s (32.0 s with the old restless map: the item's
    # arrival counts as a change) until most of it has been static for 20 s (its blob's median
    # pixel, 1.5 s after its first), then never.
    assert 31.5 <= seen[0][0] <= 32.0 and seen[-1][0] == 41.5, (seen[0][0], seen[-1][0])

    # An operator absorbs it the first time it is reported: it never comes back.
    model, first = SceneModel(PARAMS), None
    for k, (image, boxes) in enumerate(zip(clip.frames, clip.boxes)):
        blobs = model.update(k * STEP, scene(k * STEP, image)[0], boxes)
        if blobs and first is None:
            first = k * STEP
            model.absorb(blobs[0].id)
        elif first is not None:
            assert blobs == [], f"absorbed at {first}, reported again at {k * STEP}"
    assert 31.5 <= first <= 32.0


def test_ids_are_per_instance_and_reset_forgets_everything(clip):
    def summary(results):
        return [(ts, [(b.id, b.static_since) for b in blobs]) for ts, blobs in results]

    model = SceneModel(PARAMS, first_id=50)
    edit = lambda ts, img: (with_item(clip, img) if ts >= T0 else img, [])  # noqa: E731
    first = summary(run(clip, edit, model=model))
    # Its clock: when most of its pixels came to rest (the first did at T0 + STEP).
    assert first[-1][1] == [(50, T0 + 4 * STEP)]
    model.reset()
    # Without the reset the second run's blob would be 51 (checked).
    assert summary(run(clip, edit, model=model)) == first


# --------------------------------------------------------------------------- litter-sized, defaults

SMALL_SOURCE = (327, 451, 351, 466)  # a white scrap on vtest's lawn, 24 x 15 px
SMALL_AT = (200, 372)  # its copy, on the lawn where nobody walks in the first 50 s
GROUND = (0, 150, 768, 576)  # the car park, the paths and the lawn: where litter zones would be
LAWN_TOP = 300


def long_lived(results, min_area: float, min_s: float) -> list[tuple[int, float, list]]:
    """(id, seconds reported, box) of every blob of at least ``min_area`` reported for ``min_s``."""
    spans: dict[int, list] = {}
    for ts, blobs in results:
        for b in blobs:
            if b.area_px >= min_area:
                spans.setdefault(b.id, [ts, ts, b.xyxy.astype(int).tolist()])[1] = ts
    return [(i, end - start, box) for i, (start, end, box) in spans.items() if end - start >= min_s]


def small_scrap(clip: Clip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The white scrap shrunk to 12 x 8 px: its pixels, alpha and box at SMALL_AT."""
    x0, y0, x1, y1 = SMALL_SOURCE
    scrap = cv2.resize(clip.frames[0][y0:y1, x0:x1], (12, 8), interpolation=cv2.INTER_AREA)
    box = np.array([SMALL_AT[0], SMALL_AT[1], SMALL_AT[0] + 12, SMALL_AT[1] + 8], np.float64)
    return scrap.astype(np.float32), np.ones((8, 12, 1), np.float32), box


def test_defaults_find_a_12_px_scrap_and_nothing_else_in_real_footage(clip):
    """The defaults are litter-sized: a scrap 12 x 8 px (the size of a palm-sized piece of paper
    10 m below vtest's camera) is a blob within min_static_s + 3 s, while vtest's own scene gives
    no blob of litter size (16 px, the litter rule's floor) that lasts 10 s (the litter dwell)."""
    scrap, alpha, box = small_scrap(clip)
    params = SceneParams()
    results = run(clip, lambda ts, img: (pasted(img, scrap, alpha, *SMALL_AT) if T0 <= ts < T1 else img, []),
                  params, SceneModel(params, region=GROUND))
    seen = overlapping(results, box)
    assert seen and seen[0][0] <= T0 + params.min_static_s + 3, seen[:1]
    assert max(b.area_px for _, b in seen) >= 16, [b.area_px for _, b in seen]
    # On the lawn. Measured elsewhere on the ground: where walkers pass behind the sign post
    # (x 415-425, y 211-240), blobs of 16-36 px that last up to 17 s: a known false-positive
    # source of litter this small (docs/status.md).
    others = [b for b in long_lived(results, 16, 10.0)
              if b[2][1] >= LAWN_TOP and box_iou(box[None], np.array([b[2]], np.float64))[0, 0] == 0]
    assert others == [], others


def test_barrier_tape_in_the_wind_starts_no_blob(clip):
    """On the ground (the top of the frame has windows and a staircase, where no litter zone goes),
    vtest's barrier tape (y 170-200) shifts in the wind. Its resting places gave litter-sized
    blobs lasting 10 s and more with the first small-object floors; the light, same-ground and
    ghost tests now keep them out, and the restless-background map that did is gone (it vetoed
    half of the harder set's real litter, whose noisy edges look restless too)."""
    found = long_lived(run(clip, model=SceneModel(SceneParams(), region=GROUND)), 16, 10.0)
    assert not any(165 <= box[1] <= 200 for _, _, box in found), found


def shaded(image: np.ndarray, gain: float, centre=(300, 470), axes=(90, 40)) -> np.ndarray:
    """``image`` under a still, soft-edged patch of other light: a tree's shadow, a lamp."""
    light = np.zeros(image.shape[:2], np.float32)
    cv2.ellipse(light, centre, axes, 0, 0, 360, 1.0, -1)
    light = 1 + (gain - 1) * cv2.GaussianBlur(light, (0, 0), 8)[..., None]
    return np.clip(image * light, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gain", [0.7, 1.4])
def test_a_still_shadow_or_lamp_on_the_lawn_is_light_not_an_object(clip, gain):
    """A shadow (0.7) or a lamp (1.4) lying still on the lawn for 40 s: without the ring and
    same-ground tests it is litter-sized blobs lasting 10 s and more; with them, nothing."""
    def light(ts, img):
        return (shaded(img, gain) if T0 <= ts < T1 else img), []

    def lasting(params):
        return [b for b in long_lived(run(clip, light, model=SceneModel(params, region=GROUND)), 16, 10.0)
                if b[2][1] >= LAWN_TOP]

    assert lasting(SceneParams()) == []
    blind = SceneParams(light_change=10.0, light_soft_edge=10.0, same_ground_hue_deg=0.0)
    assert lasting(blind), "the test has no teeth: no blob without the ring and same-ground tests"


# The camera of the harder set's seed-0 no-litter clip (drawn by tools/hard_set.py): a cloud's
# shadow crossing the lawn, the frame's gain falling to 0.77 at 41-57 s, sensor noise, JPEG.
SEED0_CAMERA = Effects(
    gain=((0.0, 1.0), (17.09, 1.0), (24.77, 0.992), (37.68, 0.992), (41.63, 0.773), (57.48, 0.773),
          (61.21, 0.891)),
    patch=(Patch(gain=0.771, radius=(186, 99), moves=((1.11, -150, 490), (56.4, 918, 479)), softness=29.8),),
    noise=3.21, jpeg_quality=47)


def test_vtest_plastic_in_other_light_is_the_background_and_a_scrap_still_counts(clip):
    """Under that camera vtest's plastic on the lawn, near the sensor's clipping point, does not
    follow the frame's gain and became lasting blobs that opened false litter tickets; it keeps
    its pattern, which the relit test recognises. A 12 px scrap put down on the lawn meanwhile
    is still found as soon as with a steady camera."""
    shapes = [patch_shape(p) for p in SEED0_CAMERA.patch]
    scrap, alpha, box = small_scrap(clip)

    def camera(ts, img):
        img = pasted(img, scrap, alpha, *SMALL_AT) if T0 <= ts < T1 else img
        return apply_effects(img, SEED0_CAMERA, shapes, ts, rng), []

    def plastic_lasting(results):
        return [b for b in long_lived(results, 16, 10.0)
                if box_iou(np.array([PLASTIC], np.float64), np.array([b[2]], np.float64))[0, 0] > 0]

    rng = np.random.default_rng(0)
    params = SceneParams()
    results = run(clip, camera, params, SceneModel(params, region=GROUND))
    assert plastic_lasting(results) == []
    seen = overlapping(results, box)
    assert seen and seen[0][0] <= T0 + params.min_static_s + 3, seen[:1]

    rng = np.random.default_rng(0)
    blind = SceneParams(relit_correlation=0.0)
    assert plastic_lasting(run(clip, camera, blind, SceneModel(blind, region=GROUND))), \
        "the test has no teeth: the plastic gives no lasting blob without the relit test"


BAG_AT = (209.0, 380.0)  # bottom centre of a rubbish bag put down on the lawn
# A frame a little darker than the background learned, with the codec's blur and bleed.
DIM_CAMERA = Effects(gain=((0.0, 0.847),), noise=1.7, jpeg_quality=78)


def test_a_black_bag_on_the_lawn_stays_an_object_through_a_dim_and_blurred_camera(clip, monkeypatch):
    """vtest's black bag cut by the kit, 12 px tall (15 px across as pasted: a full bag seen
    from vtest's camera), put down on the lawn. Through JPEG the codec bleeds the grass's green
    into it, so it keeps the grass's hue and saturation; only its brightness (0.54-0.59 of the
    grass's) says it is not grass in shade. Its blob must last while it lies there, not restart
    every few seconds as "the same ground"."""
    bag = lift_scenes.cutout("bag", 12)
    h, w = bag.alpha.shape
    box = (BAG_AT[0] - w / 2, BAG_AT[1] - h, BAG_AT[0] + w / 2, BAG_AT[1])

    def longest_blob_s() -> float:
        rng = np.random.default_rng(0)

        def camera(ts, img):
            img = img.copy()
            if T0 <= ts < T1:
                paste(img, bag, BAG_AT, 2.0, rng)
            return apply_effects(img, DIM_CAMERA, [], ts, rng), []

        params = SceneParams()
        spans: dict[int, list[float]] = {}
        for ts, b in overlapping(run(clip, camera, params, SceneModel(params, region=GROUND)), box):
            spans.setdefault(b.id, [ts, ts])[1] = ts
        return max((end - start for start, end in spans.values()), default=0.0)

    # Measured: one blob from 25.5 s to the last frame with the bag (59.5 s).
    assert longest_blob_s() >= T1 - T0 - SceneParams().min_static_s - 5
    monkeypatch.setattr(scene, "SAME_GROUND_VALUE_SHARE", 0.0)
    assert longest_blob_s() < 10, "the test has no teeth: the bag lasts without the brightness floor"
