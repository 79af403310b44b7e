"""The evolution rule (docs/messages.md "Versions"): a newer 1.x agent's messages pass a 1.0
consumer. tests/data/schemas-1.0/ holds the schemas as protocol 1.0 shipped them (frozen: never
edit them); what the agent sends now, and messages with a field added to every object they
have (a 1.2 agent's location.address, evidence[].url, ...), must validate against them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from agent import schemas
from tests.test_fixtures import messages

FROZEN_1_0 = Path(__file__).parent / "data" / "schemas-1.0"
SENT_IN_1_0 = ("ticket", "telemetry", "status", "reply")


def schema_1_0(kind: str) -> dict:
    return json.loads((FROZEN_1_0 / f"{kind}.schema.json").read_text(encoding="utf-8"))


def with_a_new_field_everywhere(node):
    """``node`` with one unknown field added to it and to every object inside it."""
    if isinstance(node, dict):
        return {**{k: with_a_new_field_everywhere(v) for k, v in node.items()}, "added_in_a_later_minor": "x"}
    if isinstance(node, list):
        return [with_a_new_field_everywhere(item) for item in node]
    return node


def sent_now() -> list[tuple[str, dict]]:
    return [(where, m) for where, m in messages() if m["kind"] in SENT_IN_1_0]


def test_the_frozen_schemas_are_1_0s():
    assert sorted(p.stem.removesuffix(".schema") for p in FROZEN_1_0.glob("*.schema.json")) == sorted(SENT_IN_1_0)
    assert "reasons" not in schema_1_0("ticket")["properties"]


@pytest.mark.parametrize("where, message", sent_now(), ids=lambda v: v if isinstance(v, str) else "")
def test_what_the_agent_sends_now_passes_a_1_0_consumer(where, message):
    assert message["payload"]["schema_version"] != "1.0"
    jsonschema.validate(message["payload"], schema_1_0(message["kind"]))


@pytest.mark.parametrize("kind", ["ticket", "telemetry"])
def test_a_field_added_to_every_object_passes_1_0_and_current_consumers(kind):
    payload = next(m["payload"] for _, m in messages(kind) if kind != "ticket" or m["payload"]["evidence"])
    later = with_a_new_field_everywhere(payload)
    if kind == "ticket":  # what a later minor may well add: location.address, evidence[].url
        assert "added_in_a_later_minor" in later["location"] and "added_in_a_later_minor" in later["evidence"][0]
    jsonschema.validate(later, schema_1_0(kind))
    schemas.validator(kind).validate(later)


def test_status_and_reply_with_new_fields_pass_1_0():
    """No replay sends these; the shapes below are the smallest the 1.0 schemas take, grown."""
    reply = {"schema": "edge-agent/reply", "schema_version": "1.1", "ok": False, "command_id": "c-1",
             "verb": "mute", "time": "2026-12-08T00:00:00.000Z", "agent_id": "box",
             "error": {"code": "bad_schema", "message": "duration_s: must be >= 0"}}
    later = with_a_new_field_everywhere(reply)
    jsonschema.validate(later, schema_1_0("reply"))
    schemas.validator("reply").validate(later)


def test_a_1_0_consumer_still_refuses_what_is_wrong():
    """Open objects are not a blank cheque: a known field of the wrong shape fails in 1.0 too."""
    _, message = messages("ticket")[0]
    broken = copy.deepcopy(message["payload"])
    broken["location"]["lat"] = "north"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema_1_0("ticket"))
