"""Each shipped schema resolves on its own: a platform validating with plain ``jsonschema`` (or a Java/Go
library) loads one file and no registry. Shared definitions are copies of ticket.schema.json's."""

from __future__ import annotations

import jsonschema
import pytest

from agent import schemas


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


@pytest.mark.parametrize("name", schemas.NAMES)
def test_every_reference_stays_inside_its_own_file(name):
    schema = schemas.load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert [ref for ref in _refs(schema) if not ref.startswith("#")] == []


@pytest.mark.parametrize("name", schemas.NAMES)
def test_shared_definitions_equal_the_tickets(name):
    ticket_defs = schemas.load("ticket").get("$defs", {})
    for key, definition in schemas.load(name).get("$defs", {}).items():
        if key in ticket_defs:
            assert definition == ticket_defs[key], f"{name}.schema.json $defs/{key} drifted from ticket's"


def test_plain_jsonschema_validates_without_a_registry():
    telemetry = {"schema": "edge-agent/telemetry", "schema_version": "1.0", "agent_id": "a", "camera_id": "c",
                 "zone_id": "z", "rule": "crowd", "time": "2026-12-07T22:50:00Z", "ts": 1.8e9, "people": 4,
                 "density": 0.4, "level": 0, "area_m2": 10.0}
    jsonschema.validate(telemetry, schemas.load("telemetry"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(telemetry, time="yesterday"), schemas.load("telemetry"))


def _closed_objects(node, path="#"):
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            yield path
        for key, value in node.items():
            yield from _closed_objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _closed_objects(item, f"{path}/{index}")


def test_no_object_in_a_sent_message_is_closed():
    """The evolution rule (docs/messages.md "Versions"): a 1.1 agent may add a field to any object
    of what it sends (location.address, evidence[].url, error.details) without breaking a 1.0
    consumer; only the command schema, which the agent accepts, stays strict."""
    for name in (name for name in schemas.NAMES if name != "command"):
        assert list(_closed_objects(schemas.load(name))) == [], name
    assert list(_closed_objects(schemas.load("command"))), "commands must stay strict"
