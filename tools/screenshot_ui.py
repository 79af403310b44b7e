"""Screenshots of the calibration page for docs/calibration.md, taken in headless Chromium.

    python tools/screenshot_ui.py            # writes docs/img/calibration-*.jpg

Runs the real page (``agent.calibration_page.serve``) over a copy of the demo box (edge.toml and
camera_config/demo-vtest.toml, on the vtest footage from tools/fetch_footage.py) in a temporary
folder, so the repository's own camera file is never rewritten. Needs Debian's ``chromium`` and
the ``playwright`` package (the test extra).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # playwright is imported where the browser starts
    from playwright.sync_api import ViewportSize

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.calibration_page import PageSettings, serve  # noqa: E402
from agent.config import load_config  # noqa: E402
from tools.fetch_footage import ensure_footage  # noqa: E402

OUT = REPO / "docs" / "img"
VIEWPORT: ViewportSize = {"width": 1360, "height": 860}
# Ground points on the vtest plaza, in metres of a local frame: rough, as a technician would pace
# them out; the page shows how far each one is from the fitted plane.
GROUND = [((95, 455), (0.0, 0.0)), ((700, 470), (14.0, 0.5)), ((640, 250), (13.0, 16.0)),
          ((205, 240), (1.0, 15.0)), ((420, 330), (7.0, 8.0))]


def demo_box(folder: Path) -> Path:
    """A copy of the demo box whose paths point into the repository and the footage cache."""
    footage = ensure_footage()
    (folder / "camera_config").mkdir()
    camera = (REPO / "camera_config" / "demo-vtest.toml").read_text()
    camera = camera.replace('"../.cache/footage/vtest.mp4"', f'"{footage["vtest.mp4"]}"')
    (folder / "camera_config" / "demo-vtest.toml").write_text(camera)
    edge = (REPO / "edge.toml").read_text().replace('"models/', f'"{REPO}/models/')
    edge = re.sub(r'dir = "var"', f'dir = "{folder / "var"}"', edge)
    (folder / "edge.toml").write_text(edge)
    return folder / "edge.toml"


def to_screen(tab, x: float, y: float, frame=(768, 576)) -> tuple[float, float]:
    box = tab.locator("#overlay").bounding_box()
    return box["x"] + x * box["width"] / frame[0], box["y"] + y * box["height"] / frame[1]


def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport=VIEWPORT)
        tab.goto(url)
        tab.wait_for_selector("#zone-list option")

        # Zones: the demo zone, and a second one half drawn.
        tab.click("#new-zone")
        for x, y in [(380, 170), (560, 150), (620, 260), (420, 300)]:
            tab.mouse.click(*to_screen(tab, x, y))
        tab.mouse.click(*to_screen(tab, 380, 170))
        tab.fill("#zone-id", "road_litter")
        tab.press("#zone-id", "Tab")
        tab.select_option("#rule-type", "litter")
        tab.fill("#rule-form input[name=min_dwell_s]", "60")
        tab.screenshot(path=str(out / "calibration-zones.jpg"), type="jpeg", quality=80)
        # A parameter out of bounds, refused with its key.
        tab.fill("#rule-form input[name=min_dwell_s]", "-5")
        tab.click("#save")
        tab.wait_for_selector("#save-status.error")
        tab.screenshot(path=str(out / "calibration-error.jpg"), type="jpeg", quality=80)
        tab.fill("#rule-form input[name=min_dwell_s]", "60")
        tab.click("#save")
        tab.wait_for_selector("#save-status.ok")

        # Ground points, fitted.
        tab.check("input[name=mode][value=ground]")
        tab.select_option("#datum", "local-m")
        tab.fill("#origin-lat", "31.2304")
        tab.fill("#origin-lon", "121.4737")
        rows = tab.locator("#points tbody tr")
        for i, ((x, y), (a, b)) in enumerate(GROUND):
            tab.mouse.click(*to_screen(tab, x, y))
            rows.nth(i).locator("input.ground-a").fill(str(a))
            rows.nth(i).locator("input.ground-b").fill(str(b))
            rows.nth(i).locator("input.ground-b").press("Tab")
        tab.click("#fit")
        tab.wait_for_selector("#fit-status.ok")
        tab.screenshot(path=str(out / "calibration-ground.jpg"), type="jpeg", quality=80)

        # The live preview: the demo zone's rule state over detections.
        tab.check("input[name=mode][value=zones]")
        tab.select_option("#zone-list", "0")
        tab.check("#preview-toggle")
        tab.wait_for_selector("#preview-states li:has-text('keep_clear: ')", timeout=120_000)
        tab.wait_for_timeout(6000)  # a few analysed frames: tracks and a dwell under way
        tab.screenshot(path=str(out / "calibration-preview.jpg"), type="jpeg", quality=80)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-screens-") as tmp:
        edge = demo_box(Path(tmp))
        started, stop, server = threading.Event(), threading.Event(), {}

        def ready(page_server) -> None:
            server["url"] = page_server.url
            started.set()

        thread = threading.Thread(target=serve, args=(load_config(edge), PageSettings(port=0)),
                                  kwargs={"ready": ready, "stop": stop}, daemon=True)
        thread.start()
        if not started.wait(30):
            raise SystemExit("the calibration page did not start")
        try:
            shoot(server["url"], args.out, args.chromium)
        finally:
            stop.set()
            thread.join(timeout=20)
    for shot in sorted(args.out.glob("calibration-*.jpg")):
        print(shot.relative_to(REPO) if shot.is_relative_to(REPO) else shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
