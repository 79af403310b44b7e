"""The JSON Schemas of every message the agent sends or accepts, shipped inside the package.

Platform engineers validate against the same files (``agent/schemas/*.schema.json``). The ``$id``s
live under the reserved ``.invalid`` domain: they name the schemas, nothing is ever fetched.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from jsonschema import Draft202012Validator

NAMES = ("ticket", "command", "reply", "status", "telemetry", "alarm")


@cache
def load(name: str) -> dict:
    return json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for one message kind: each shipped schema resolves on its own, as a platform
    loads it (tests/test_schemas_standalone.py)."""
    return Draft202012Validator(load(name))
