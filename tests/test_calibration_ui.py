"""The calibration page in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
draw a zone with the mouse, pick its rule, save, and the camera file on disk is what ``edge-agent
check`` accepts; a bad parameter is refused on the page naming its key; ground points give a
fitted calibration whose reprojection errors are shown and stored; the live preview shows the
zone rule's state.

The server is the real one (``agent.calibration_page.serve``) on a free loopback port, reading
the vtest footage with the agent's own reader; nothing is mocked.
"""

from __future__ import annotations

import re
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent import cli
from agent.calibration_page import PageSettings, serve
from agent.config import load_config
from tests.helpers import write_camera, write_edge

CHROMIUM = Path("/usr/bin/chromium")
FRAME = (768, 576)  # vtest
# Four ground points (pixels of the vtest frame) and where they are in a local frame in metres,
# from a homography of our own making: the fit must find it again to within the clicks' rounding.
H_TRUE = np.array([[0.05, 0.01, -3.0], [0.002, -0.09, 50.0], [0.0, 0.0004, 1.0]])
CLICKS = [(120, 520), (650, 540), (600, 330), (180, 320), (400, 420)]


def ground_of(x: float, y: float) -> tuple[float, float]:
    u, v, w = H_TRUE @ np.array([x, y, 1.0])
    return round(u / w, 3), round(v / w, 3)


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # the test extra installs it: a missing one must fail, not skip
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium chromium-driver (tools/test.sh does)")
    with sync_api.sync_playwright() as p:
        # The system Chromium, never a downloaded one; root (CI) needs --no-sandbox.
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def box(tmp_path, footage):
    cam = write_camera(tmp_path, "cam-a", str(footage["vtest.mp4"]), zone="plaza")
    edge = write_edge(tmp_path, [cam], command_key=False)
    return edge, cam


@pytest.fixture
def page_url(box):
    edge, _ = box
    started, stop = threading.Event(), threading.Event()
    server = {}

    def ready(s):
        server["url"] = s.url
        started.set()

    thread = threading.Thread(target=serve, args=(load_config(edge), PageSettings(port=0)),
                              kwargs={"ready": ready, "stop": stop}, daemon=True)
    thread.start()
    assert started.wait(30), "the calibration page did not start"
    yield server["url"]
    stop.set()
    thread.join(timeout=20)


@pytest.fixture
def page(browser, page_url):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(page_url)
    tab.wait_for_selector("#zone-list option")
    yield tab
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def to_screen(tab, x: float, y: float) -> tuple[float, float]:
    """Frame pixels -> page coordinates of the canvas over the frame."""
    box = tab.locator("#overlay").bounding_box()
    return box["x"] + x * box["width"] / FRAME[0], box["y"] + y * box["height"] / FRAME[1]


def click_frame(tab, x: float, y: float) -> None:
    tab.mouse.click(*to_screen(tab, x, y))


def test_draw_a_zone_pick_its_rule_save_and_check_accepts_the_file(page, box):
    edge, cam = box
    page.click("#new-zone")
    for x, y in [(100, 100), (300, 100), (300, 200), (100, 200)]:
        click_frame(page, x, y)
    click_frame(page, 100, 100)  # back on the first corner: the zone is closed
    # Move a corner with the mouse.
    page.mouse.move(*to_screen(page, 300, 200))
    page.mouse.down()
    page.mouse.move(*to_screen(page, 310, 210), steps=4)
    page.mouse.move(*to_screen(page, 320, 220), steps=4)
    page.mouse.up()
    page.fill("#zone-id", "lawn")
    page.press("#zone-id", "Tab")
    page.select_option("#rule-type", "litter")
    # The form comes from litter's Params: its keys, units from the names, defaults as placeholders.
    dwell = page.locator("#rule-form input[name=min_dwell_s]")
    assert dwell.get_attribute("placeholder") == "default: 10"
    assert page.locator("#rule-form [data-field=min_dwell_s] .unit").inner_text().strip() == "(s)"
    assert page.locator("#rule-form [data-field=min_area_px] .unit").inner_text().strip() == "(px)"
    assert page.locator("#rule-form [data-field=px_per_m2] .unit").inner_text().strip() == "(px/m²)"
    dwell.fill("20")
    page.fill("#rule-form input[name=mover_classes]", "person, bicycle")
    page.fill("#grid-code", "310101001099")
    page.click("#save")
    page.wait_for_selector("#save-status.ok")

    doc = tomllib.loads(cam.read_text())
    assert doc["frame_size"] == list(FRAME)
    assert doc["location"]["grid_code"] == "310101001099"
    lawn = doc["zones"]["lawn"]
    assert lawn["rule"] == {"type": "litter", "min_dwell_s": 20, "mover_classes": ["person", "bicycle"]}
    assert np.allclose(lawn["polygon"], [[100, 100], [300, 100], [320, 220], [100, 200]], atol=1.0), lawn["polygon"]
    assert doc["zones"]["plaza"]["rule"]["type"] == "object_dwell"  # the other zone is kept
    assert cam.with_name(cam.name + ".bak").is_file()
    assert cli.main(["-c", str(edge), "check"]) == 0


def test_a_bad_parameter_is_refused_on_the_page_naming_its_key(page, box):
    _, cam = box
    before = cam.read_bytes()
    page.fill("#rule-form input[name=min_dwell_s]", "-1")
    page.click("#save")
    status = page.wait_for_selector("#save-status.error")
    assert "zones.plaza.rule.min_dwell_s" in status.inner_text()
    assert "must be >= 0" in status.inner_text()
    invalid = page.locator("#rule-form .field.invalid")
    assert invalid.get_attribute("data-field") == "min_dwell_s"
    assert invalid.locator(".why").inner_text() == "zones.plaza.rule.min_dwell_s: must be >= 0, got -1.0"
    assert cam.read_bytes() == before  # nothing replaced
    assert not cam.with_name(cam.name + ".bak").exists()


def test_ground_points_are_fitted_and_their_errors_shown_and_stored(page, box):
    edge, cam = box
    page.check("input[name=mode][value=ground]")
    page.select_option("#datum", "local-m")
    page.fill("#origin-lat", "31.2304")
    page.fill("#origin-lon", "121.4737")
    for x, y in CLICKS:
        click_frame(page, x, y)
    rows = page.locator("#points tbody tr")
    assert rows.count() == len(CLICKS)
    for i, (x, y) in enumerate(CLICKS):
        a, b = ground_of(x, y)
        rows.nth(i).locator("input.ground-a").fill(str(a))
        rows.nth(i).locator("input.ground-b").fill(str(b))
        rows.nth(i).locator("input.ground-b").press("Tab")
    page.click("#fit")
    status = page.wait_for_selector("#fit-status.ok").inner_text()

    shown_rms = float(re.search(r"rms ([0-9.]+) px", status).group(1))
    shown = [float(rows.nth(i).locator(".error-px").inner_text().split()[0]) for i in range(len(CLICKS))]
    stored = tomllib.loads((cam.parent / "cam-a.calibration.toml").read_text())
    assert stored["version"] == 1 and stored["datum"] == "local-m" and stored["frame_size"] == list(FRAME)
    assert [p["error_px"] for p in stored["points"]] == pytest.approx(shown, abs=0.01)
    assert stored["rms_px"] == pytest.approx(shown_rms, abs=0.01)
    assert shown_rms < 1.0  # the clicks land within a pixel of the points we made the ground from
    assert tomllib.loads(cam.read_text())["calibration"] == "cam-a.calibration.toml"
    assert (edge.parent / "var" / "reference" / "cam-a.jpg").is_file()  # the view check's reference
    assert load_config(edge).camera("cam-a").calibration is not None
    assert cli.main(["-c", str(edge), "check"]) == 0


def test_too_few_ground_points_are_refused_on_the_page(page, box):
    page.check("input[name=mode][value=ground]")
    for i, (x, y) in enumerate(CLICKS[:3]):
        click_frame(page, x, y)
        row = page.locator("#points tbody tr").nth(i)
        row.locator("input.ground-a").fill("31.23")
        row.locator("input.ground-b").fill(str(121.47 + i * 0.0001))
        row.locator("input.ground-b").press("Tab")
    page.click("#fit")
    assert "4" in page.wait_for_selector("#fit-status.error").inner_text()
    assert not (box[1].parent / "cam-a.calibration.toml").exists()


def test_the_live_preview_shows_each_zone_rule_state(page):
    page.check("#preview-toggle")
    # The detector loads and the pipeline runs in the page's process: the state text is the rule's.
    state = page.wait_for_selector("#preview-states li:has-text('plaza: ')", timeout=90_000)
    page.wait_for_function("document.querySelector('#frame').src.startsWith('data:image/jpeg')", timeout=30_000)
    assert "object_dwell: " in state.inner_text()


def test_a_renamed_zone_keeps_what_the_page_does_not_edit(box):
    """Schedules, categories and privacy are not on the page: saving must not drop them."""
    from agent.calibration_page import CalibrationPage

    edge, cam = box
    cam.write_text(cam.read_text() + '\n[[zones.plaza.schedule]]\nstart = "08:00"\nend = "20:00"\n')
    page = CalibrationPage(load_config(edge), PageSettings())
    try:
        polygon = [[0, 250], [768, 250], [768, 576], [0, 576]]
        page.save_zones("cam-a", {"zones": {"square": {"from": "plaza", "polygon": polygon,
                                                       "rule": {"type": "object_dwell", "classes": ["person"]}}}})
    finally:
        page.close()
    zones = tomllib.loads(cam.read_text())["zones"]
    assert list(zones) == ["square"]
    assert zones["square"]["schedule"] == [{"start": "08:00", "end": "20:00"}]
    assert zones["square"]["rule"] == {"type": "object_dwell", "classes": ["person"]}
