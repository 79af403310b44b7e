"""Per-frame inputs for rules besides the detections, one module per analyser, found like rules.

An analyser module registers a class with :func:`register_analyser` under the name that rules
give as a need (``register(..., needs=frozenset({"water_mask"}))``). A camera builds an analyser
only when a rule of one of its watched zones needs it, from the camera's config and those zones
(scaled to the picture); each frame, what its ``update`` returns is ``obs.inputs[name]`` for every
rule of the camera. Tracks (agent/track.py) and static blobs (agent/scene.py) are the built-in two;
a plug-in module that edge.toml's ``plugins`` names registers more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent.registry import Registry
from agent.types import Detections, Frame
from agent.zones import Zone

if TYPE_CHECKING:
    from agent.config import CameraConfig


class Analyser(Protocol):
    def update(self, frame: Frame, detections: Detections) -> object:
        """What ``frame`` gives the rules that need this analyser; it may keep state across frames."""


@dataclass(frozen=True)
class AnalyserType:
    name: str
    build: Callable[[CameraConfig, list[Zone]], Analyser]  # the camera, the zones whose rules need it


_ANALYSERS: Registry[AnalyserType] = Registry("analyser", __name__, __path__)


def register_analyser(name: str):
    """Make the decorated class, built as ``cls(camera, zones)``, the analyser ``name``."""
    def wrap(analyser_cls: type) -> type:
        _ANALYSERS.add(name, analyser_cls, AnalyserType(name, analyser_cls))
        return analyser_cls

    return wrap


def analyser_types() -> dict[str, AnalyserType]:
    """Every analyser: this package's and the plug-ins' imported so far."""
    return _ANALYSERS.all()
