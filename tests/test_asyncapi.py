"""agent/schemas/asyncapi.json describes every topic agent/topics.py builds, and every payload
schema it names is shipped beside it.

No light AsyncAPI validator is on PyPI (the official JSON Schema of AsyncAPI 3.0 ships in npm's
@asyncapi/specs), so the checks are structural: those that keep the document true to the code."""

from __future__ import annotations

import inspect
import json
import re
from importlib import resources

import pytest

from agent import schemas
from agent.tickets import SCHEMA_VERSION
from agent.topics import Topics

PARAMETER = re.compile(r"\{([A-Za-z]+)\}")


def document() -> dict:
    return json.loads(resources.files(schemas).joinpath("asyncapi.json").read_text(encoding="utf-8"))


def address_pattern(address: str) -> re.Pattern:
    """A channel address as a regex over topics: each {parameter} one topic level."""
    parts = PARAMETER.split(address)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)))


def built_topics() -> dict[str, str]:
    """Every topic agent/topics.py builds, with each argument a level of its own."""
    topics = Topics("cityops", "box-1")
    built = {}
    for name, method in inspect.getmembers(topics, inspect.ismethod):
        if not name.startswith("_"):
            args = [f"{p}-x" for p in inspect.signature(method).parameters]
            built[name] = method(*args)
    return built


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from ([value] if key == "$ref" else refs(value))
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def pointer(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_it_is_an_asyncapi_3_document_of_this_protocol():
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert ".".join(doc["info"]["version"].split(".")[:2]) == SCHEMA_VERSION


@pytest.mark.parametrize("method, topic", sorted(built_topics().items()))
def test_every_topic_the_agent_builds_is_a_channel(method, topic):
    addresses = [c["address"] for c in document()["channels"].values()]
    matching = [a for a in addresses if address_pattern(a).fullmatch(topic.replace("+", "verb-x"))]
    assert len(matching) == 1, f"Topics.{method}() builds {topic}: channels {matching}"


def test_every_channel_is_a_topic_the_agent_builds_and_declares_its_parameters():
    topics = list(built_topics().values())
    for name, channel in document()["channels"].items():
        pattern = address_pattern(channel["address"])
        assert any(pattern.fullmatch(t) for t in topics), f"channel {name}: no topic of agent/topics.py"
        assert set(PARAMETER.findall(channel["address"])) == set(channel.get("parameters", {})), name


def test_every_reference_resolves_and_every_schema_it_names_is_shipped():
    doc = document()
    files = set()
    for ref in refs(doc):
        if ref.startswith("#/"):
            pointer(doc, ref)  # KeyError: a dangling reference
        else:
            files.add(ref)
    assert files == {f"{name}.schema.json" for name in schemas.NAMES}
    for name in schemas.NAMES:
        schemas.load(name)  # shipped as package data, loadable the way a consumer loads it


def test_operations_send_what_the_agent_sends_and_receive_commands():
    doc = document()
    actions = {pointer(doc, op["channel"]["$ref"])["address"]: op["action"] for op in doc["operations"].values()}
    assert actions.pop("{prefix}/{agentId}/cmd/{verb}") == "receive"
    assert set(actions.values()) == {"send"}
    assert len(actions) == len(doc["channels"]) - 2  # replies are the command operation's reply


def test_the_command_verbs_are_the_command_schemas():
    verbs = document()["channels"]["commands"]["parameters"]["verb"]["enum"]
    assert verbs == schemas.load("command")["properties"]["verb"]["enum"]
