"""The evaluation harness: ticket-to-truth matching (pure logic), the scenario kit's composites
(real pixels where the recipe says, when it says), and one scenario end to end through the agent."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from agent.config import load_config
from agent.typedtoml import ConfigError
from tests.helpers import REPO, write_edge
from tools.evaluate import TicketMessage, evaluate_scenario, match_tickets, rule_stats
from tools.scenario_kit import Placement, Truth, build, load_recipe


def opened(ticket: str, t: float, rule: str = "object_dwell", zone: str = "lawn") -> TicketMessage:
    return TicketMessage(ticket, "opened", rule, zone, t)


def cleared(ticket: str, t: float, rule: str = "object_dwell", zone: str = "lawn") -> TicketMessage:
    return TicketMessage(ticket, "cleared", rule, zone, t)


LAWN_10_40 = Truth("object_dwell", "lawn", 10, 40)


# --------------------------------------------------------------------------- matching

def test_a_ticket_opened_inside_the_window_detects_the_event_and_times_it():
    matching = match_tickets([LAWN_10_40], [opened("a", 13), TicketMessage("a", "updated", "object_dwell", "lawn", 20),
                                            cleared("a", 44.5)])
    (m,) = matching.matches
    assert m.detected and m.ticket_id == "a"
    assert m.time_to_open_s == 3 and m.time_to_clear_s == 4.5
    assert matching.false_positives == ()


def test_window_is_start_to_end_plus_slack():
    for t, hit in [(9.9, False), (10, True), (40, True), (50, True), (50.1, False)]:
        matching = match_tickets([LAWN_10_40], [opened("a", t)], slack_s=10)
        assert matching.matches[0].detected is hit, t
        assert len(matching.false_positives) == (0 if hit else 1), t


def test_an_event_without_end_lasts_to_the_end_and_has_no_time_to_clear():
    endless = Truth("object_dwell", "lawn", 10, None)
    (m,) = match_tickets([endless], [opened("a", 500), cleared("a", 600)]).matches
    assert m.detected and m.clear_s == 600 and m.time_to_clear_s is None


def test_rule_and_zone_must_both_agree():
    matching = match_tickets([LAWN_10_40], [opened("a", 13, zone="path"), opened("b", 14, rule="litter")])
    assert not matching.matches[0].detected
    assert [fp.ticket_id for fp in matching.false_positives] == ["a", "b"]


def test_first_ticket_wins_and_the_rest_are_false_positives():
    matching = match_tickets([LAWN_10_40], [opened("late", 20), opened("early", 13), cleared("early", 16)])
    assert matching.matches[0].ticket_id == "early"
    # A ticket that cleared early and reopened: the second one is a false positive.
    assert [fp.ticket_id for fp in matching.false_positives] == ["late"]
    assert matching.matches[0].time_to_clear_s == 16 - 40


def test_a_ticket_serves_one_event_and_clears_are_taken_from_its_own_ticket():
    first, second = Truth("object_dwell", "lawn", 10, 20), Truth("object_dwell", "lawn", 25, 40)
    matching = match_tickets([second, first], [opened("a", 13), cleared("b", 30), opened("b", 28), cleared("a", 26)])
    assert [(m.truth, m.ticket_id, m.clear_s) for m in matching.matches] == [(first, "a", 26), (second, "b", 30)]


def test_rule_stats_precision_recall_and_timing():
    a = match_tickets([LAWN_10_40, Truth("object_dwell", "lawn", 60, 70)],
                      [opened("a", 13), cleared("a", 47), opened("x", 100)])
    b = match_tickets([Truth("object_dwell", "lawn", 5, 15)], [opened("c", 9), cleared("c", 20),
                                                               opened("y", 9, rule="litter")])
    stats = {s.rule: s for s in rule_stats([a, b])}
    dwell = stats["object_dwell"]
    assert (dwell.truth_events, dwell.detected, dwell.false_positives) == (3, 2, 1)
    assert dwell.precision == pytest.approx(2 / 3) and dwell.recall == pytest.approx(2 / 3)
    assert (dwell.open_mean_s, dwell.open_max_s) == (3.5, 4)
    assert (dwell.clear_mean_s, dwell.clear_max_s) == (6, 7)
    litter = stats["litter"]  # only false positives: recall undefined, precision 0
    assert (litter.truth_events, litter.precision, litter.recall, litter.open_mean_s) == (0, 0.0, None, None)


# --------------------------------------------------------------------------- recipes

def test_moves_are_interpolated_and_held_at_the_ends():
    bike = Placement(box=(0, 0, 10, 10), height_px=50, image="x.jpg", moves=((2, 100, 300), (8, 700, 360)),
                     appear_s=2, remove_s=8)
    assert bike.position(5) == (400, 330)
    assert bike.position(0) == (100, 300) and bike.position(9) == (700, 360)
    assert [bike.visible(t) for t in (1.9, 2, 7.9, 8)] == [False, True, True, False]


def test_recipe_camera_may_be_a_camera_file(footage, tmp_path):
    recipe_path = tmp_path / "from_file.toml"
    recipe_path.write_text(f"""\
camera = "{REPO / 'camera_config' / 'demo-vtest.toml'}"
[background]
video = "vtest.mp4"
[[truth]]
rule = "object_dwell"
zone = "keep_clear"
start_s = 0
""")
    recipe = load_recipe(recipe_path)
    assert recipe.camera["id"] == "demo-vtest" and "url" not in recipe.camera
    assert recipe.background == footage["vtest.mp4"]


@pytest.mark.parametrize("change, key", [
    (("height_px = 125", "height_pz = 125"), "placement[1].height_pz"),
    (('zone = "grass"', 'zone = "lawn"'), "truth[0].zone"),
    (("appear_s = 2", "appear_s = 2\nremove_s = 1"), "placement[1]"),
])
def test_recipe_mistakes_name_the_key(footage, tmp_path, change, key):
    recipe_path = tmp_path / "bad.toml"
    recipe_path.write_text(KIT_RECIPE.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_recipe(recipe_path)
    assert error.value.key == key


# --------------------------------------------------------------------------- the kit

LITTER_BOX = (70, 495, 160, 525)  # the real plastic on vtest's grass in frame 0
KIT_RECIPE = """\
[background]
video = "vtest.mp4"
start_s = 10
duration_s = 4

[camera]
id = "kit-test"

[camera.location]
lat = 31.2
lon = 121.4
grid_code = "310101001001"

[camera.zones.grass]
polygon = [[0, 420], [768, 420], [768, 576], [0, 576]]

[camera.zones.grass.rule]
type = "object_dwell"
classes = ["person"]

[[placement]]
video_frame = 0
box = [70, 495, 160, 525]
at = [600, 545]
height_px = 30
appear_s = 1
remove_s = 3

[[placement]]
image = "person.jpg"
box = [186, 92, 282, 380]
mask = "grabcut"
keep = [[213, 318, 245, 366]]
at = [250, 470]
height_px = 125
appear_s = 2
shadow = true
noise = 2.0

[[truth]]
rule = "object_dwell"
zone = "grass"
start_s = 2
"""


def decode(path, first: int = 0, count: int | None = None) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if count is not None and index >= first + count:
                break
            if index >= first:
                frames.append(frame.to_ndarray(format="bgr24").astype(np.int16))
    return frames


@pytest.fixture(scope="module")
def kit_build(footage, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit")
    recipe_path = folder / "kit_test.toml"
    recipe_path.write_text(KIT_RECIPE)
    recipe = load_recipe(recipe_path)
    return recipe, build(recipe, folder / "out")


def test_composite_keeps_fps_trims_and_has_the_keyframe_grid(kit_build):
    _, composite = kit_build
    assert (composite.fps, composite.frames, composite.duration_s) == (10, 40, 4)
    with av.open(str(composite.video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height, stream.average_rate) == ("h264", 768, 576, 10)
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) == 40
    assert all(p.pts == p.dts for p in packets), "no B-frames"
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 20], "a keyframe every 2 s"


def test_trim_starts_at_start_s(kit_build, footage):
    _, composite = kit_build
    out = decode(composite.video, 0, 1)[0]
    source = decode(footage["vtest.mp4"], 0, 111)
    # Before anything appears the composite is the background 10 s in (frame 100), up to
    # re-encoding noise; people walk, so every other frame is further away, even its neighbours.
    distance = {index: np.abs(out - source[index]).mean() for index in (0, 90, 99, 100, 101, 110)}
    assert min(distance, key=distance.get) == 100, distance


def test_video_patch_is_real_pixels_at_at_only_while_placed(kit_build, footage):
    _, composite = kit_build
    x1, y1, x2, y2 = LITTER_BOX
    source = decode(footage["vtest.mp4"], 0, 1)[0][y1:y2, x1:x2]
    frames = decode(composite.video)
    # at = (600, 545) is the bottom centre: the 90x30 patch covers x 555-645, y 515-545.
    where = (slice(515 + 3, 545 - 3), slice(555 + 3, 645 - 3))  # inside the feathered edge
    inner = source[3:-3, 3:-3]
    pasted = frames[20][where]  # t = 2 s
    assert np.abs(pasted.mean(axis=(0, 1)) - inner.mean(axis=(0, 1))).max() < 6
    assert np.abs(pasted - inner).mean() < 8, "the same pixels, not just the same mean"
    for index in (5, 35):  # 0.5 s (before appear_s) and 3.5 s (after remove_s): grass again
        assert np.abs(frames[index][where].mean(axis=(0, 1)) - inner.mean(axis=(0, 1))).max() > 40


def test_grabcut_person_stands_where_and_as_tall_as_asked(kit_build, footage):
    _, composite = kit_build
    frames = decode(composite.video)
    backgrounds = decode(footage["vtest.mp4"], 100, 40)
    window = (slice(300, 520), slice(150, 350))  # around at = (250, 470), no real people there

    def changed(index):
        return np.abs(frames[index][window] - backgrounds[index][window]).max(axis=2) > 25

    assert changed(15).sum() < 20, "nothing before appear_s"
    ys, xs = np.nonzero(changed(30))
    bottom, top = 300 + ys.max(), 300 + ys.min()
    # The feathered edge fades the outline's outer pixels into the lawn: a few px shorter.
    assert abs(bottom - 470) <= 3 and abs((bottom - top) - 125) <= 8
    assert abs(150 + (xs.min() + xs.max()) / 2 - 250) <= 8
    # No rectangle of the photo's straw-coloured field came along: the corners of the person's
    # bounding box are still lawn.
    box = frames[30][top:bottom, 150 + xs.min():150 + xs.max()]
    for corner in (box[:6, :6], box[:6, -6:]):
        b, g, r = corner.reshape(-1, 3).mean(axis=0)
        assert g > r and g > b, "lawn green at the corners"


def test_camera_file_and_truth_are_written(kit_build, tmp_path):
    _, composite = kit_build
    camera = load_config(write_edge(tmp_path, [composite.camera_file])).camera("kit-test")
    assert camera.url == str(composite.video)
    assert [z.zone.id for z in camera.zones] == ["grass"]
    assert composite.truth == (Truth("object_dwell", "grass", 2, None),)
    assert composite.truth_file.is_file() and composite.build_key in composite.truth_file.read_text()


def test_builds_are_deterministic(kit_build, tmp_path):
    recipe, composite = kit_build
    again = build(recipe, tmp_path)
    assert hashlib.sha256(again.video.read_bytes()).digest() == hashlib.sha256(composite.video.read_bytes()).digest()


# --------------------------------------------------------------------------- end to end

def test_person_standing_on_the_lawn_is_detected_and_cleared(footage, tmp_path):
    """scenarios/person_dwell_lawn.toml through the real agent: one ticket, on time, nothing else."""
    result = evaluate_scenario(REPO / "scenarios" / "person_dwell_lawn.toml", tmp_path)
    assert result.error is None
    (match,) = result.matching.matches
    assert match.detected
    min_dwell_s = 3
    assert 0 <= match.time_to_open_s <= min_dwell_s + 3
    assert match.time_to_clear_s is not None and match.time_to_clear_s <= 10
    assert result.matching.false_positives == ()
