"""Scenario rules: one module per rule type, found by name in config.

A rule module defines a frozen ``Params`` dataclass (its config keys, validated at load) and a rule
class decorated with :func:`register`, naming what the rule needs computed for it (tracks, static
blobs) and the platform case category its tickets default to. Adding a scenario is adding a module
here plus config; nothing else in the tree changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from agent.types import Observation, RuleEvent
from agent.zones import Zone


class Need(str, Enum):
    """Work the pipeline does for a camera only when one of its rules needs it."""

    TRACKS = "tracks"
    STATIC_BLOBS = "static_blobs"
    # The rule's objects are often too small for the full-frame pass (a parked bike 50 px tall in
    # a 1280x720 view): the detector also runs on crops around its zone (agent/tiling.py).
    SMALL_OBJECTS = "small_objects"


@dataclass(frozen=True)
class Category:
    """A case class of the city platform (digital city management event classes)."""

    major: str
    minor: str
    code: str

    def as_dict(self) -> dict:
        return {"major": self.major, "minor": self.minor, "code": self.code}


class Rule(Protocol):
    zone: Zone

    def update(self, obs: Observation) -> list[RuleEvent]:
        """Feed one analysed frame; return the events it causes (usually none)."""

    def present(self, obs: Observation) -> np.ndarray | None:
        """Boxes showing the condition in ``obs`` right now, or None if it is not visible.

        A look at the current picture without the dwell timers, for the platform's ``verify``.
        """

    def reset(self) -> None:
        """Forget all state, e.g. when the zone's schedule makes it inactive."""

    def dwell(self) -> float | None:
        """Seconds the rule's current candidate has held towards its ``min_dwell_s`` as of the
        last frame, None when there is none: what the replay summary and preview report as
        "candidate 23 s / 60 s"."""


@dataclass(frozen=True)
class RuleType:
    name: str
    params: type
    rule: type
    category: Category
    needs: frozenset[Need]


_RULES: dict[str, RuleType] = {}


def register(name: str, params: type, category: Category, needs: frozenset[Need] = frozenset()):
    def wrap(rule_cls: type) -> type:
        _RULES[name] = RuleType(name, params, rule_cls, category, needs)
        return rule_cls

    return wrap


def rule_types() -> dict[str, RuleType]:
    """Every rule type, importing each module of this package once."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(_RULES)


def build_rule(rule_type: str, zone: Zone, params) -> Rule:
    return rule_types()[rule_type].rule(zone, params)
