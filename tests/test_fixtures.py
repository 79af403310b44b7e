"""What real replays of each rule send validates against the shipped schemas: tickets (with the
rule's own facts schema, chosen by ``rule``), telemetry and local alarms.

The fixtures are the outboxes of ``edge-agent replay`` over each rule's scenario composite,
checked in (tests/data/fixtures/<rule>.json); ``python tools/make_fixtures.py`` rewrites them
after a rule's facts change."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from agent import schemas
from agent.faults import Fault
from agent.rules import rule_types

FIXTURES = Path(__file__).parent / "data" / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
FIXTURE_RULES = [path.stem for path in FIXTURE_FILES]


def fixture(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def messages(kind: str | None = None) -> list[tuple[str, dict]]:
    """(fixture name and index, message) over every fixture."""
    return [(f"{path.stem}[{i}]", m) for path in FIXTURE_FILES for i, m in enumerate(fixture(path)["messages"])
            if kind is None or m["kind"] == kind]


def facts_schemas() -> dict[str, str]:
    """Rule name -> the $defs entry its tickets' facts must match, as the ticket schema's allOf says."""
    chosen = {}
    for branch in schemas.load("ticket")["allOf"]:
        rule = branch["if"]["properties"]["rule"]["const"]
        chosen[rule] = branch["then"]["properties"]["facts"]["$ref"].removeprefix("#/$defs/")
    return chosen


def test_every_rule_has_a_fixture_and_a_facts_schema():
    """Every rule type's replay is a fixture; camera faults have facts schemas, and one of them (the
    view check's covered camera) a fixture too: no replay of a file can take a camera offline."""
    faults = {f.value for f in Fault}
    assert set(rule_types()) <= set(FIXTURE_RULES) <= set(rule_types()) | faults
    assert set(facts_schemas()) == set(rule_types()) | faults
    assert set(facts_schemas().values()) <= set(schemas.load("ticket")["$defs"])


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_a_rules_replay_opened_its_ticket_with_the_optional_fields(path):
    doc = fixture(path)
    tickets = [m["payload"] for m in doc["messages"] if m["kind"] == "ticket" and m["payload"]["rule"] == doc["rule"]]
    assert "opened" in [t["event"] for t in tickets], path.name
    assert all(t["location"]["datum"] == "WGS-84" and len(t["gb28181"]["device_id"]) == 20 for t in tickets)


def test_fixtures_cover_telemetry_alarms_and_reasons():
    assert messages("telemetry"), "the crowd rule's replay sends telemetry"
    assert messages("alarm"), "the lift_ebike scenario names an alarm_topic"
    reasons = [m["payload"] for _, m in messages("ticket") if "reason" in m["payload"]]
    assert reasons and all(t["reason"] == ",".join(t["reasons"]) for t in reasons)


@pytest.mark.parametrize("where, message", messages(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_fixture_message_validates(where, message):
    schemas.validator(message["kind"]).validate(message["payload"])


@pytest.mark.parametrize("rule", FIXTURE_RULES)
def test_a_rules_facts_are_checked_against_its_own_schema(rule):
    """The allOf branch for the rule bites: a ticket whose facts lack what the rule always sends,
    or carry it with the wrong type, is refused; under another rule's name the same facts are not
    checked against this rule's schema."""
    ticket = next(m["payload"] for _, m in messages("ticket") if m["payload"]["rule"] == rule)
    required = schemas.load("ticket")["$defs"][facts_schemas()[rule]]["required"]
    missing = copy.deepcopy(ticket)
    del missing["facts"][required[0]]
    with pytest.raises(jsonschema.ValidationError, match=required[0]):
        schemas.validator("ticket").validate(missing)
    mistyped = copy.deepcopy(ticket)
    mistyped["facts"][required[0]] = [1]
    with pytest.raises(jsonschema.ValidationError):
        schemas.validator("ticket").validate(mistyped)
    schemas.validator("ticket").validate(dict(missing, rule="a_rule_of_a_newer_agent"))


def test_crowd_telemetry_is_checked_against_the_crowds_numbers():
    _, message = messages("telemetry")[0]
    schemas.validator("telemetry").validate(message["payload"])
    without_people = {k: v for k, v in message["payload"].items() if k != "people"}
    with pytest.raises(jsonschema.ValidationError, match="people"):
        schemas.validator("telemetry").validate(without_people)
