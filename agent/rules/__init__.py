"""Scenario rules: one module per rule type, found by name in config.

A rule module defines a frozen ``Params`` dataclass (its config keys, validated at load) and a rule
class decorated with :func:`register`. Adding a scenario is adding a module here; nothing else in
the tree changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Protocol

from agent.types import Detections, RuleEvent
from agent.zones import Zone


class Rule(Protocol):
    zone: Zone

    def update(self, ts: float, detections: Detections) -> list[RuleEvent]:
        """Feed one analysed frame's detections; return the events this frame causes."""


@dataclass(frozen=True)
class RuleType:
    name: str
    params: type
    rule: type


_RULES: dict[str, RuleType] = {}


def register(name: str, params: type):
    def wrap(rule_cls: type) -> type:
        _RULES[name] = RuleType(name, params, rule_cls)
        return rule_cls

    return wrap


def rule_types() -> dict[str, RuleType]:
    """Every rule type, importing each module of this package once."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(_RULES)


def build_rule(rule_type: str, zone: Zone, params) -> Rule:
    return rule_types()[rule_type].rule(zone, params)
