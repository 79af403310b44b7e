"""Scenario rules: one module per rule type, found by name in config.

A rule module defines a frozen ``Params`` dataclass (its config keys, validated at load) and a rule
class decorated with :func:`register`, naming what the rule needs computed for it (the analysers
whose per-frame inputs it reads, agent/analysers/; crops for small objects) and the platform case
category its tickets default to. Each frame the rule returns one :class:`RuleOutput`: its events and
whatever goes with them (pictures, telemetry, local alarms). Adding a scenario is adding a module
here, or in a plug-in package that edge.toml's ``plugins`` names, plus config; nothing else in the
tree changes (docs/architecture.md, "Adding a scenario").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol

import numpy as np

from agent.registry import Registry

# Need and RuleOutput are rule modules' vocabulary: they import them from here.
from agent.types import Need, Observation, RuleOutput
from agent.zones import Zone


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
    name: ClassVar[str]  # set by :func:`register`: what the rule's events and tickets say
    zone: Zone

    def update(self, obs: Observation) -> RuleOutput:
        """Feed one analysed frame; return what it causes (usually no event)."""

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
    needs: frozenset[Need | str]  # Need members, or the names of plug-in analysers
    cadence: Cadence = Cadence.STATIC


_RULES: Registry[RuleType] = Registry("rule", __name__, __path__)


def register(name: str, params: type, category: Category, needs: frozenset[Need | str] = frozenset(),
             cadence: Cadence = Cadence.STATIC):
    """Make the decorated class the rule type ``name``, and its ``name`` that name."""
    def wrap(rule_cls: type[Any]) -> type[Any]:
        _RULES.add(name, rule_cls, RuleType(name, params, rule_cls, category, frozenset(needs), cadence))
        rule_cls.name = name
        return rule_cls

    return wrap


def rule_types() -> dict[str, RuleType]:
    """Every rule type: this package's modules (each imported once) and the plug-ins' (edge.toml's
    ``plugins``, imported when the config is loaded)."""
    return _RULES.all()


def camera_cadence(rule_type_names) -> Cadence:
    """A camera is LIVE when any of its rules is."""
    types = rule_types()
    return Cadence.LIVE if any(types[name].cadence is Cadence.LIVE for name in rule_type_names) else Cadence.STATIC


def build_rule(rule_type: str, zone: Zone, params) -> Rule:
    return rule_types()[rule_type].rule(zone, params)
