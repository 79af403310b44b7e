"""Write docs/configuration-reference.md from the config dataclasses themselves.

    python tools/config_reference.py            # rewrite the page
    python tools/config_reference.py --check    # exit 1 if the page is out of date (tests run this)

Keys, types, defaults, bounds and help come from the code that validates them, so the page cannot
drift from what the agent accepts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
import typing
from enum import Enum
from pathlib import Path

from agent.calibration import CalibrationFile, PointSection
from agent.change_gate import ChangeGateParams
from agent.command_auth import CommandsSection
from agent.config import (
    AgentSection,
    CameraFile,
    EdgeFile,
    Gb28181Section,
    InferenceSection,
    LocationSection,
    MetricsSection,
    ModelSection,
    ModelsUpdateSection,
    MqttSection,
    StorageSection,
    ZoneSection,
)
from agent.privacy import PrivacyParams
from agent.rules import rule_types
from agent.scene import SceneParams
from agent.storage import StorageLimits
from agent.tamper import TamperParams
from agent.tiling import TilingParams, ZoneCropParams
from agent.track import TrackerParams

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration-reference.md"

SECTIONS = [
    ("edge.toml (top level)", EdgeFile),
    ("edge.toml [agent]", AgentSection),
    ("edge.toml [storage]", StorageSection),
    ("edge.toml [storage.limits]", StorageLimits),
    ("edge.toml [models.<name>]", ModelSection),
    ("edge.toml [mqtt]", MqttSection),
    ("edge.toml [commands] (signed platform commands)", CommandsSection),
    ("edge.toml [metrics] (Prometheus /metrics and JSON /healthz; docs/monitor.md)", MetricsSection),
    ("edge.toml [inference] (cameras sharing the detector)", InferenceSection),
    ("edge.toml [models_update] (model downloads by `model` command; docs/update.md)", ModelsUpdateSection),
    ("camera file (top level)", CameraFile),
    ("camera file [location]", LocationSection),
    ("camera file [gb28181] (the camera on the platform's GB/T 28181 video network)", Gb28181Section),
    ("camera file [zones.<id>]", ZoneSection),
    ("camera file [tamper] (the view check)", TamperParams),
    ("camera file [tracker]", TrackerParams),
    ("camera file [scene] (static new objects)", SceneParams),
    ("camera file [change_gate] (skipping the detector when nothing changed)", ChangeGateParams),
    ("camera file [zone_crops] (small objects in bike zones)", ZoneCropParams),
    ("camera file [tiling] (grid tiles over the whole frame)", TilingParams),
    ("camera file [privacy] and [zones.<id>.privacy] (people hidden in evidence)", PrivacyParams),
    ("calibration file (top level; docs/calibration.md)", CalibrationFile),
    ("calibration file [[points]]", PointSection),
]


def type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (list, frozenset):
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args if a is not Ellipsis) + "]"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " or ".join(f"\"{m.value}\"" for m in tp)
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp)).replace("PosixPath", "path").replace("Path", "path")


def stable(value):
    """A default as TOML-ish text that does not depend on set ordering (hash randomisation)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(stable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [stable(v) for v in value]
    return value


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = stable(f.default)
        return "—" if value is None else f"`{value}`"
    if f.default_factory is not dataclasses.MISSING:
        return "empty"
    return "**required**"


def bounds_text(f: dataclasses.Field) -> str:
    m = f.metadata
    parts = [f"{op} {m[k]}" for k, op in (("ge", "≥"), ("gt", ">"), ("le", "≤")) if m.get(k) is not None]
    return ", ".join(parts)


def attribute_docstrings(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields (the style of agent/track.py and agent/scene.py)."""
    class_def = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(class_def, ast.ClassDef)  # the source of a class
    body = class_def.body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def table(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = attribute_docstrings(cls)
    rows = ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        meaning = f.metadata.get("help") or docs.get(f.name, "")
        rows.append(f"| `{f.name}` | {type_name(hints[f.name])} | {default_text(f)} | {bounds_text(f)} "
                    f"| {meaning.replace('|', '/')} |")
    refused = getattr(cls, "REFUSED_KEYS", {})
    if refused:
        rows += ["", *(f"Refused: `{name}`: {reason}." for name, reason in refused.items())]
    return rows


def render() -> str:
    out = ["# Configuration reference", "",
           "Generated by `python tools/config_reference.py` from the dataclasses that validate the config;",
           "do not edit by hand. Unknown keys are errors. See `configuration.md` for a walk-through.", ""]
    for title, cls in SECTIONS:
        out += [f"## {title}", "", *table(cls), ""]
    for name, rule in sorted(rule_types().items()):
        doc = (sys.modules[rule.rule.__module__].__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out += [f"## rule `{name}` (camera file `[zones.<id>.rule]`, `type = \"{name}\"`)", "", doc, "",
                *table(rule.params), ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
