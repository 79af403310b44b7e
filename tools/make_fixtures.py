#!/usr/bin/env python3
"""Regenerate tests/data/fixtures/<rule>.json: the messages real replays of each rule send.

Each rule's scenario composite (tools/scenario_kit.py, reused from ``--out`` when up to date) is
replayed through ``edge-agent replay`` with the bundled model, exactly as tools/evaluate.py does,
with the camera file given a coordinate datum and GB/T 28181 codes so the optional fields are in
the messages too. What the replay's outbox holds for the platform (tickets, telemetry, local
alarms; evidence bytes are left out) is written as it would be published: topic, kind and JSON
payload, signatures included. tests/test_fixtures.py validates every one against the shipped
schemas, so a rule whose facts drift from ticket.schema.json fails there.

Usage:
    python tools/make_fixtures.py [RULE ...] [--out .cache/scenarios]

Needs the footage (tools/fetch_footage.py); a replay takes tens of seconds per rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/make_fixtures.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.camera_file import dumps
from agent.outbox import Outbox
from tools import REPO
from tools.evaluate import replay
from tools.scenario_kit import DEFAULT_OUT, ensure_built, load_recipe

FIXTURES = REPO / "tests" / "data" / "fixtures"
# The recipe whose replay shows each rule (or camera fault) opening and clearing a ticket.
SCENARIOS = {
    "litter": "scenarios/litter_lawn.toml",
    "object_dwell": "scenarios/person_dwell_lawn.toml",
    "misparked_bikes": "scenarios/bikes_parked_green_belt.toml",
    "crowd": "scenarios/crowd_vtest_plaza.toml",
    "out_of_shop": "scenarios/shop_front_goods.toml",
    "lift_ebike": "scenarios/lift_ebike_car.toml",  # with alarm_topic: its alarms too
    # Camera faults are tickets too; the view check's facts are shared by view_shifted.
    "camera_tampered": "tools/fixture_recipes/camera_covered.toml",
}
JSON_KINDS = ("ticket", "telemetry", "alarm")
# Made-up codes of the right shape: 20 digits, as a GB/T 28181 directory lists them.
GB28181 = {"device_id": "31010100001180000001", "channel_id": "31010100001320000001"}


def fixture_camera(camera_file: Path) -> Path:
    """A copy of the composite's camera file (beside it: its video url is relative) naming a datum
    and GB/T 28181 codes."""
    doc = tomllib.loads(camera_file.read_text())
    doc["location"]["datum"] = "WGS-84"
    doc["gb28181"] = GB28181
    copy = camera_file.with_name(camera_file.name.replace(".camera.toml", ".fixture.camera.toml"))
    copy.write_text(dumps(doc, "# Written by tools/make_fixtures.py; do not edit."))
    return copy


def sent_messages(store: Path) -> list[dict]:
    """The JSON messages of the replay's outbox, in the order they would be published."""
    outbox = Outbox(store / "outbox.sqlite")
    try:
        return [{"topic": m.topic, "kind": m.kind, "payload": json.loads(m.body())}
                for m, _ in outbox.messages() if m.kind in JSON_KINDS]
    finally:
        outbox.close()


def make_fixture(rule: str, out_dir: Path) -> dict:
    recipe = load_recipe(REPO / SCENARIOS[rule])
    composite = ensure_built(recipe, out_dir)
    with tempfile.TemporaryDirectory(prefix="fixtures-") as tmp:
        replay(composite.video, fixture_camera(composite.camera_file), composite.camera_id, store=Path(tmp))
        messages = sent_messages(Path(tmp))
    tickets = [m for m in messages if m["kind"] == "ticket" and m["payload"]["rule"] == rule]
    if not tickets:
        raise SystemExit(f"make_fixtures: the replay of {recipe.path.name} opened no {rule} ticket")
    return {"rule": rule, "scenario": str(recipe.path.relative_to(REPO)), "made_by": "tools/make_fixtures.py",
            "messages": messages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rules", nargs="*", choices=[[], *SCENARIOS], help="default: every rule")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where composites are built and reused")
    args = parser.parse_args(argv)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for rule in args.rules or SCENARIOS:
        fixture = make_fixture(rule, args.out)
        path = FIXTURES / f"{rule}.json"
        path.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
        kinds = {kind: sum(m["kind"] == kind for m in fixture["messages"]) for kind in JSON_KINDS}
        print(f"{path.relative_to(REPO)}: {', '.join(f'{n} {kind}' for kind, n in kinds.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
