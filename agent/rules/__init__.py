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


class Cadence(str, Enum):
    """How often a rule's camera must be looked at, which decides how it is decoded and served.

    STATIC subjects (litter, parked bikes, goods, crowds) stay for minutes: a frame every 1-2 s
    is enough, and keyframes alone deliver that at a tenth of a full decode's cost. LIVE subjects
    (an e-bike wheeled into a lift) are gone in seconds: every frame is decoded and the camera's
    frames are analysed before any static camera's when the box is short of CPU."""

    STATIC = "static"
    LIVE = "live"


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
    cadence: Cadence = Cadence.STATIC


_RULES: dict[str, RuleType] = {}


def register(name: str, params: type, category: Category, needs: frozenset[Need] = frozenset(),
             cadence: Cadence = Cadence.STATIC):
    def wrap(rule_cls: type) -> type:
        _RULES[name] = RuleType(name, params, rule_cls, category, needs, cadence)
        return rule_cls

    return wrap


def rule_types() -> dict[str, RuleType]:
    """Every rule type, importing each module of this package once."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(_RULES)


def camera_cadence(rule_type_names) -> Cadence:
    """A camera is LIVE when any of its rules is."""
    types = rule_types()
    return Cadence.LIVE if any(types[name].cadence is Cadence.LIVE for name in rule_type_names) else Cadence.STATIC


def build_rule(rule_type: str, zone: Zone, params) -> Rule:
    return rule_types()[rule_type].rule(zone, params)
