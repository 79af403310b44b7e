"""Privacy by default: people hidden in every picture and clip that leaves the box.

Pure unit tests of the pixelation first; then the real agent core (real detector, ticket book,
evidence store, command handler) on real vtest footage, measuring in the stored evidence that the
pixels of the people changed beyond recovery and the rest of the picture did not.
"""

from __future__ import annotations

import json
import threading
import time

import av
import cv2
import numpy as np
import pytest

from agent.app import Agent
from agent.clips import cut_clip
from agent.clock import ManualClock
from agent.config import ConfigError, load_config
from agent.evidence import annotate, annotate_detections
from agent.privacy import PeopleTrail, PrivacyMode, PrivacyParams, anonymise, clip_filter, grow, regions
from agent.transport import Request
from agent.types import Detections, EventKind, Frame
from tests.helpers import signed, write_camera, write_edge
from tests.onnx_fixtures import make_yolo_like_onnx
from tests.test_clips import T0, assert_browser_mp4, ring_of
from tests.test_storage import book_in, event, noisy_frame
from tools.import_model import yolo_manifest_text

START = 1_800_000_000.0
NAMES = ("person", "bicycle")


def noise(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def dets(boxes, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ids = np.zeros(len(boxes), np.int32) if classes is None else np.asarray(classes, np.int32)
    return Detections(boxes, np.ones(len(boxes), np.float32), ids, NAMES)


def high_pass(image):
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return gray - cv2.GaussianBlur(gray, (0, 0), 1.5)


def detail_kept(picture, reference, box):
    """Correlation of the fine detail (high-pass) of two pictures inside ``box``: ~1 kept, ~0 gone."""
    x1, y1, x2, y2 = box
    a, b = high_pass(picture)[y1:y2, x1:x2].ravel(), high_pass(reference)[y1:y2, x1:x2].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def mad(a, b, mask=None):
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)
    return float(diff[mask].mean() if mask is not None else diff.mean())


# --------------------------------------------------------------------------- pure pixelation

def test_pixelation_flattens_person_boxes_and_leaves_the_rest_alone():
    image = noise()
    params = PrivacyParams(margin=0)
    out = anonymise(image, dets([[16, 24, 64, 104]]), params)
    inside = out[24:104, 16:64]
    assert mad(inside, image[24:104, 16:64]) > 50  # noise against its block means
    assert detail_kept(out, image, (16, 24, 64, 104)) < 0.1
    # Blocks of block_px (12 here: 1/8 of the 48-px side is 6): each one flat.
    assert len(np.unique(inside[:12, :12].reshape(-1, 3), axis=0)) == 1
    outside = np.ones(image.shape[:2], bool)
    outside[24:104, 16:64] = False
    assert np.array_equal(out[outside], image[outside])
    assert out is not image and np.array_equal(image, noise()), "the raw frame is never changed"


def test_blocks_grow_with_the_box_so_large_people_stay_unrecognisable():
    image = noise(400, 400)
    out = anonymise(image, dets([[0, 0, 320, 400]]), PrivacyParams(margin=0, block_px=8))
    assert len(np.unique(out[:40, :40].reshape(-1, 3), axis=0)) == 1  # 320 / 8 = 40-px blocks


def test_blur_removes_the_detail_too():
    image = noise()
    out = anonymise(image, dets([[16, 24, 64, 104]]), PrivacyParams(mode=PrivacyMode.BLUR, margin=0))
    assert detail_kept(out, image, (20, 28, 60, 100)) < 0.1
    assert high_pass(out)[28:100, 20:60].std() < 0.1 * high_pass(image)[28:100, 20:60].std()


def test_off_no_people_and_other_classes_keep_the_picture():
    image = noise()
    person_and_bike = dets([[10, 10, 50, 50], [60, 60, 120, 110]], [0, 1])
    assert anonymise(image, person_and_bike, PrivacyParams(mode=PrivacyMode.OFF)) is image
    assert anonymise(image, person_and_bike, PrivacyParams(people=False)) is image
    out = anonymise(image, person_and_bike, PrivacyParams(margin=0))
    assert np.array_equal(out[60:110, 60:120], image[60:110, 60:120]), "a bicycle is no person"
    assert anonymise(image, Detections.empty(NAMES), PrivacyParams()) is image


def test_regions_grow_by_the_margin_and_stay_inside_the_frame():
    grown = regions(dets([[10, 20, 50, 100], [150, 100, 170, 130]]), PrivacyParams(margin=0.25), (120, 160, 3))
    assert grown.tolist() == [[0, 0, 60, 120], [145, 92, 160, 120]]
    assert grow(np.array([[200, 200, 210, 210]]), 0.1, (120, 160, 3)).shape == (0, 4)  # off the frame


def test_a_clip_picture_between_analysed_frames_hides_the_boxes_of_both():
    trail = PeopleTrail(keep_s=10, max_gap_s=0.75)
    trail.add(100.0, dets([[0, 0, 20, 40]]))
    trail.add(100.5, dets([[30, 0, 50, 40]]))
    assert trail.boxes_at(100.25).tolist() == [[0, 0, 20, 40], [30, 0, 50, 40]]
    assert trail.boxes_at(100.5).tolist() == [[30, 0, 50, 40]]
    assert trail.boxes_at(102.0) is None, "no analysed frame near: unknown"
    picture = noise()
    hide = clip_filter(trail, PrivacyParams(margin=0))
    assert detail_kept(hide(picture, 100.25), picture, (30, 0, 50, 40)) < 0.1
    assert np.array_equal(hide(picture, 100.25)[:, 60:], picture[:, 60:])
    assert detail_kept(hide(picture, 102.0), picture, (0, 0, 160, 120)) < 0.1, "unknown: all hidden"
    trail.add(111.0, Detections.empty(NAMES))
    assert trail.boxes_at(100.0) is None, "older than keep_s: forgotten"


def test_privacy_tables_are_validated_at_load(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4")
    cam.write_text(cam.read_text() + '\n[zones.plaza.privacy]\nmode = "off"\n\n[privacy]\nblock_px = 16\n')
    config = load_config(write_edge(tmp_path, [cam])).camera("cam1")
    assert config.privacy == PrivacyParams(block_px=16)
    assert config.privacy_for("plaza").mode is PrivacyMode.OFF
    assert config.privacy_for(None) == config.privacy
    for extra, error in (('[zones.plaza.privacy]\nmode = "smudge"\n', r"zones\.plaza\.privacy\.mode: must be one of"),
                         ("[privacy]\nblock_px = 4\n", r"privacy\.block_px: must be >= 8"),
                         ("[privacy]\nfaces = true\n", r"privacy\.faces: unknown key")):
        bad = write_camera(tmp_path, "cam2", "/nonexistent.mp4")
        bad.write_text(bad.read_text() + "\n" + extra)
        with pytest.raises(ConfigError, match=error):
            load_config(write_edge(tmp_path, [bad]))


def test_a_camera_that_hides_people_refuses_a_model_that_cannot_find_them(tmp_path):
    model = make_yolo_like_onnx(tmp_path / "bikes.onnx", np.zeros((1, 5, 1), np.float32), {0: "bicycle"})
    manifest = tmp_path / "bikes.toml"
    manifest.write_text(yolo_manifest_text(model, "bikes-only", "test fixture", "AGPL-3.0", tmp_path))
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4")
    with pytest.raises(ConfigError, match=r"cam1\.toml: privacy: model 'bikes-only' has no class person"):
        Agent(load_config(write_edge(tmp_path, [cam], manifest=manifest)))
    cam.write_text(cam.read_text() + '\n[privacy]\nmode = "off"\n')
    Agent(load_config(write_edge(tmp_path, [cam], manifest=manifest)))  # people sent as seen, knowingly


# --------------------------------------------------------------------------- the real agent on vtest

ZONE = "[[0, 250], [768, 250], [768, 576], [0, 576]]"
OFF = '\n[zones.plaza.privacy]\nmode = "off"\n'


def core(tmp_path, extra=""):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4", dwell=2, polygon=ZONE)
    cam.write_text(cam.read_text() + extra)
    return Agent(load_config(write_edge(tmp_path, [cam])), clock=ManualClock(START))


def opened_with_its_frame(agent, frames):
    """Feed frames until a ticket opens: its document and the observation it was made from."""
    pipeline = agent.pipelines["cam1"]
    seen = []
    pipeline.on_ticket = lambda doc: seen.append((doc, pipeline.latest))
    for i, image in enumerate(frames):
        agent.clock._now = START + i * 0.5
        pipeline.on_frame(Frame("cam1", agent.clock.now(), image))
        opened = [(doc, obs) for doc, obs in seen if doc["event"] == "opened"]
        if opened:
            return opened[0]
    raise AssertionError("people stand in the zone: a ticket must open")


def as_jpeg(image, quality=85):
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def people(detections, min_w=16, min_h=32):
    """The detector's person boxes of a frame, large enough to measure, shrunk past the outlines."""
    boxes = detections.xyxy[detections.of_classes({"person"})].astype(int)
    return [(x1 + 3, y1 + 3, x2 - 3, y2 - 3) for x1, y1, x2, y2 in boxes if x2 - x1 >= min_w and y2 - y1 >= min_h]


def far_from_people(detections, shape, params=PrivacyParams(), pad=16):
    """Pixels outside every hidden region, with a JPEG block's worth and more to spare."""
    mask = np.ones(shape[:2], bool)
    for x1, y1, x2, y2 in regions(detections, params, shape):
        mask[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad] = False
    return mask


def unanonymised(agent, image, boxes, label):
    """What a ticket picture would be without privacy: the raw frame, annotated the same way."""
    return annotate(image, agent.config.camera("cam1").zones[0].zone, boxes, [label] * len(boxes))


def stored(agent, ticket_id, name):
    return cv2.imread(str(agent.evidence.folder(ticket_id) / name))


def assert_people_hidden(picture, reference, detections):
    boxes = people(detections)
    assert boxes, "vtest has people in every frame the zone rule ticketed"
    for box in boxes:
        x1, y1, x2, y2 = box
        assert detail_kept(picture, reference, box) < 0.35, f"detail of the person at {box} survived"
        assert mad(picture[y1:y2, x1:x2], reference[y1:y2, x1:x2]) > 6, f"the person at {box} barely changed"
    far = far_from_people(detections, picture.shape)
    assert far.mean() > 0.3, "enough of the picture is far from people to compare"
    assert mad(picture, as_jpeg(reference), far) < 1.5, "pixels far from people are the frame's"


def test_ticket_snapshot_hides_the_people_and_keeps_the_rest(tmp_path, vtest_2fps):
    agent = core(tmp_path)
    doc, obs = opened_with_its_frame(agent, vtest_2fps)
    reference = unanonymised(agent, obs.image, np.array(doc["boxes"], np.float32), doc["class"])
    snapshot = stored(agent, doc["ticket_id"], "snapshot.jpg")
    assert_people_hidden(snapshot, reference, obs.detections)
    # The raw frame stays on the box, as it was: it is named by no message.
    assert mad(stored(agent, doc["ticket_id"], "frame.jpg"), as_jpeg(obs.image)) < 0.5
    published = {m.payload_path for m, _ in agent.outbox.messages("evidence")}
    assert str(agent.evidence.folder(doc["ticket_id"]) / "snapshot.jpg") in published
    assert not any(path.endswith("frame.jpg") for path in published)


def test_a_zone_whose_policy_says_off_keeps_the_people(tmp_path, vtest_2fps):
    agent = core(tmp_path, OFF)
    doc, obs = opened_with_its_frame(agent, vtest_2fps)
    reference = unanonymised(agent, obs.image, np.array(doc["boxes"], np.float32), doc["class"])
    snapshot = stored(agent, doc["ticket_id"], "snapshot.jpg")
    assert people(obs.detections)
    for box in people(obs.detections):
        assert detail_kept(snapshot, reference, box) > 0.8, f"the person at {box} is kept"
    assert mad(snapshot, as_jpeg(reference)) < 1.5


def command(agent, verb, **body):
    doc = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": f"cmd-{verb}", "verb": verb, **body}
    topic = f"cityops/test-box/cmd/{verb}"
    return agent.commands.handle(Request(topic, signed(topic, doc, agent.clock.now()), None, None))


def test_spot_check_snapshot_hides_the_people_even_where_a_zone_keeps_them(tmp_path, vtest_2fps):
    agent = core(tmp_path, OFF)  # the zone's override is for its tickets; a spot check is no evidence of one
    _doc, _ = opened_with_its_frame(agent, vtest_2fps)
    reply = command(agent, "snapshot", camera_id="cam1")
    assert reply["ok"], reply
    obs = agent.pipelines["cam1"].latest
    zones = [zc.zone for zc in agent.config.camera("cam1").zones]
    spot = stored(agent, "spot-cmd-snapshot", "snapshot.jpg")
    assert_people_hidden(spot, annotate_detections(obs.image, zones, obs.detections), obs.detections)


def test_verification_picture_hides_the_people(tmp_path, vtest_2fps):
    agent = core(tmp_path)
    doc, _ = opened_with_its_frame(agent, vtest_2fps)
    reply = command(agent, "verify", ticket_id=doc["ticket_id"])
    assert reply["result"] == "still_present", reply
    obs = agent.pipelines["cam1"].latest
    shown = agent.pipelines["cam1"].rule_for("plaza", "object_dwell").present(obs)
    reference = unanonymised(agent, obs.image, shown, doc["class"])
    assert_people_hidden(stored(agent, doc["ticket_id"], "snapshot_verify.jpg"), reference, obs.detections)


# --------------------------------------------------------------------------- clips

def clip_of_first_ticket(tmp_path, footage, extra=""):
    """Run the agent on vtest.mp4 (paced like a live camera, store-only) until the first ticket's
    clip is attached; the clip's path and the agent. Paced, so that analysed frames come at the
    asked rate: read as fast as it goes on a loaded box, the analysis falls behind and the clip's
    pictures far from any analysed frame are (rightly) hidden whole."""
    cam = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), dwell=2, polygon=ZONE, realtime=True)
    cam.write_text(cam.read_text() + extra)
    agent = Agent(load_config(write_edge(tmp_path, [cam])))
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()

    def clip_path():
        for message, _ in agent.outbox.messages("ticket"):
            for item in json.loads(message.payload)["evidence"]:
                if item["kind"] == "clip":
                    return agent.evidence.folder(json.loads(message.payload)["ticket_id"]) / "clip.mp4"
        return None

    try:
        deadline = time.monotonic() + 120
        while (path := clip_path()) is None:
            assert time.monotonic() < deadline and runner.is_alive(), "no clip attached"
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(60)
    return path, agent


def decode(path, first=0, count=None):
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= first:
                frames.append(frame.to_ndarray(format="bgr24"))
            if count is not None and len(frames) >= count:
                break
    return frames


def matching_source(clip_frames, source_path):
    """The source's frames the clip shows: found by the clip's first frame (people hidden are a
    small part of the picture, so the right frame is still by far the closest)."""
    small = cv2.resize(clip_frames[0], None, fx=0.25, fy=0.25).astype(np.int16)
    best, best_index = np.inf, 0
    with av.open(str(source_path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            diff = np.abs(cv2.resize(frame.to_ndarray(format="bgr24"), None, fx=0.25, fy=0.25) - small).mean()
            if diff < best:
                best, best_index = diff, index
    return decode(source_path, best_index, len(clip_frames))


def test_clip_hides_the_people_in_its_pictures(tmp_path, footage):
    path, agent = clip_of_first_ticket(tmp_path, footage)
    clip = decode(path)
    source = matching_source(clip, footage["vtest.mp4"])
    assert len(clip) >= 50 and len(source) == len(clip)
    detector = agent.detectors["default"]
    hidden = total = whole = 0
    sampled = list(zip(clip, source))[::5]
    for picture, original in sampled:
        # People found afresh on each source picture, most of them between analysed frames.
        found = detector.detect(original)
        for box in people(found):
            x1, y1, x2, y2 = box
            total += 1
            hidden += (detail_kept(picture, original, box) < 0.35
                       and mad(picture[y1:y2, x1:x2], original[y1:y2, x1:x2]) > 6)
        if detail_kept(picture, original, (0, 0, picture.shape[1], picture.shape[0])) < 0.35:
            whole += 1  # no analysed frame near this picture (the box lagged): hidden whole
            continue
        far = far_from_people(found, picture.shape)
        assert mad(picture, original, far) < 4, "away from people the clip is the stream (re-encoded)"
    print(f"clip: {hidden} of {total} people found on the source pictures are hidden, "
          f"{whole} of {len(sampled)} pictures hidden whole")
    assert total >= 40 and hidden >= 0.9 * total
    assert whole <= len(sampled) // 4, "most pictures lie near an analysed frame when the camera is paced"


def test_clip_of_a_zone_that_keeps_people_is_the_stream_itself(tmp_path, footage):
    path, _ = clip_of_first_ticket(tmp_path, footage, OFF)
    clip = decode(path)
    source = matching_source(clip, footage["vtest.mp4"])
    assert max(mad(a, b) for a, b in zip(clip, source)) < 0.5, "remuxed: the same pictures"


def test_a_clip_whose_pictures_are_filtered_is_transcoded_to_a_browser_mp4(footage, tmp_path):
    ring = ring_of(footage["vtest.mp4"])
    seen = []

    def hide_nothing(picture, ts):
        seen.append(ts)
        return picture

    started = time.process_time()
    info = cut_clip(ring, T0 + 25.3, T0 + 35.3, tmp_path / "clip.mp4", hide_nothing)
    print(f"10 s clip decoded, filtered and encoded in {time.process_time() - started:.2f} s of CPU")
    frames = assert_browser_mp4(info)
    assert len(seen) == len(frames) == info.frames
    assert seen[0] <= T0 + 25.3 < seen[1] and seen == sorted(seen), "from the picture shown at the start"
    assert info.duration_s == pytest.approx(10.0, abs=0.25), "not from a keyframe: no GOP early"


def test_pictures_a_rule_renders_from_the_frame_hide_the_same_people(tmp_path):
    _, evidence, book = book_in(tmp_path)
    frame, heatmap = noisy_frame(1), noisy_frame(2)
    person = dets([[200, 100, 280, 300]])
    doc = book.on_rule_event(event(EventKind.OPENED, 1000.0), frame, person, {"heatmap": heatmap})
    stored_heatmap = cv2.imread(str(evidence.folder(doc["ticket_id"]) / "heatmap.jpg"))
    assert detail_kept(stored_heatmap, heatmap, (200, 100, 280, 300)) < 0.1
    assert detail_kept(stored_heatmap, heatmap, (400, 100, 600, 300)) > 0.8
    with pytest.raises(ValueError, match="heatmap.*cannot be hidden"):
        book.on_rule_event(event(EventKind.OPENED, 2000.0), frame, person, {"heatmap": heatmap[:100]})
