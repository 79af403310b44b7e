"""Developer tools: footage, composites and their evaluation, benchmarks, model derivation.
None of them is needed on the box."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shipped_manifest() -> Path:
    """The detector manifest the bundled edge.toml runs (``[models.default]``): what the tools
    measure unless told otherwise, so their figures are the shipped box's."""
    with open(REPO / "edge.toml", "rb") as f:
        return REPO / tomllib.load(f)["models"]["default"]["manifest"]
