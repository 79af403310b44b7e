"""A sixth scenario added from outside the agent's tree: tests/toy_rule.py (a toy analyser and a
toy rule) and config alone. ``edge-agent replay`` runs in a subprocess, so the toy never joins the
registries of this pytest process (tests/test_fixtures.py expects the built-in rules only)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from agent import schemas
from tests.helpers import REPO, write_camera, write_edge

TOY_RULE = """\
[zones.plaza.rule]
type = "toy_bright_zone"
min_luma = {min_luma}
min_dwell_s = 2
alarm_topic = "site/plaza/alarm"
"""


def toy_box(tmp_path, video, min_luma: float = 1, plugins: str = '["tests.toy_rule"]'):
    """A box with the one camera over ``video``, its zone watched by the toy rule."""
    cam = write_camera(tmp_path, "cam1", str(video))
    text = cam.read_text()
    cam.write_text(text[:text.index("[zones.plaza.rule]")] + TOY_RULE.format(min_luma=min_luma))
    edge = write_edge(tmp_path, [cam])
    edge.write_text(f"plugins = {plugins}\n" + edge.read_text())  # a top-level key: before the first table
    return edge


def agent_cli(edge, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def stored(store) -> list[tuple[str, str, dict]]:
    """(kind, topic, document) of every JSON message in the outbox, in order."""
    db = sqlite3.connect(store / "outbox.sqlite")
    return [(kind, topic, json.loads(payload)) for kind, topic, payload in db.execute(
        "SELECT kind, topic, payload FROM messages WHERE content_type = 'application/json' ORDER BY id")]


def test_a_plugin_rule_and_analyser_make_schema_valid_tickets_alarms_and_telemetry(tmp_path, footage):
    edge = toy_box(tmp_path, footage["vtest.mp4"])
    out = agent_cli(edge, "replay", str(footage["vtest.mp4"]), "--camera", "cam1", "--store", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    messages = stored(tmp_path / "store")
    tickets = [doc for kind, _, doc in messages if kind == "ticket"]
    assert tickets, out.stderr
    for doc in tickets:
        schemas.validator("ticket").validate(doc)
    opened = tickets[0]
    assert (opened["event"], opened["rule"], opened["class"], opened["zone_id"]) == \
        ("opened", "toy_bright_zone", "bright_zone", "plaza")
    assert opened["category"] == {"major": "市容环境", "minor": "其他", "code": "01-99"}
    assert opened["facts"]["luma"] >= 1
    # The rule's picture goes with the snapshot, the alarm rings on the topic the zone names.
    assert {"snapshot", "luma"} <= {e["kind"] for e in opened["evidence"]}
    (alarm,) = [(topic, doc) for kind, topic, doc in messages if kind == "alarm"]
    assert alarm[0] == "site/plaza/alarm" and alarm[1]["ticket_id"] == opened["ticket_id"]
    schemas.validator("alarm").validate(alarm[1])
    telemetry = [doc for kind, _, doc in messages if kind == "telemetry"]
    assert telemetry and all(doc["rule"] == "toy_bright_zone" and "luma" in doc for doc in telemetry)
    for doc in telemetry:
        schemas.validator("telemetry").validate(doc)
    # The replay's account knows the plug-in's zone like any other.
    assert "zone plaza (toy_bright_zone): 159 frames watched" in out.stderr


def test_a_zone_that_never_gets_bright_enough_gets_no_ticket_but_still_telemetry(tmp_path, footage):
    edge = toy_box(tmp_path, footage["vtest.mp4"], min_luma=255)
    out = agent_cli(edge, "replay", str(footage["vtest.mp4"]), "--camera", "cam1", "--store", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    kinds = [kind for kind, _, _ in stored(tmp_path / "store")]
    assert "ticket" not in kinds and "alarm" not in kinds and "telemetry" in kinds


def test_a_plugin_that_cannot_be_imported_is_a_config_error_naming_it(tmp_path, footage):
    edge = toy_box(tmp_path, footage["vtest.mp4"], plugins='["tests.no_such_plugin"]')
    out = agent_cli(edge, "check")
    assert out.returncode == 2
    assert "plugins: cannot import 'tests.no_such_plugin': ModuleNotFoundError" in out.stderr, out.stderr


def test_a_rule_needing_an_analyser_nobody_registers_is_a_config_error_naming_the_zone(tmp_path, footage):
    (tmp_path / "needy_plugin.py").write_text(
        "from tests.toy_rule import BrightZoneRule, Params\n"
        "from agent.rules import Category, register\n"
        "register('needy', Params, Category('a', 'b', 'c'), needs=frozenset({'water_mask'}))(\n"
        "    type('NeedyRule', (BrightZoneRule,), {}))\n")
    edge = toy_box(tmp_path, footage["vtest.mp4"], plugins='["needy_plugin"]')
    cam = tmp_path / "cam1.toml"
    cam.write_text(cam.read_text().replace('type = "toy_bright_zone"', 'type = "needy"'))
    out = agent_cli(edge, "check", env=os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode == 2
    assert "zones.plaza.rule.type: rule 'needy' needs the analyser 'water_mask', which no module registers" \
        in out.stderr, out.stderr
