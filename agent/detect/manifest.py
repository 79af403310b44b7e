"""Model manifests: what a model file is, where it came from and how to feed it.

The manifest is a TOML file beside the ONNX file. Its sha256 is checked when the model loads, so a
truncated copy or a swapped file fails at start with a clear message instead of detecting nonsense.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from agent.typedtoml import ConfigError, load_dataclass, read_toml, setting


class Decoder(str, Enum):
    NANODET = "nanodet"
    YOLO = "yolo"


class Precision(str, Enum):
    FP32 = "fp32"
    INT8 = "int8"


class Resize(str, Enum):
    STRETCH = "stretch"  # plain resize to the input size, aspect ratio not kept
    LETTERBOX = "letterbox"  # keep aspect ratio, pad with grey (Ultralytics' preprocessing)


@dataclass(frozen=True)
class NanoDetHead:
    stride: int = setting(gt=0)
    scores: str = setting(help="Output with N x classes sigmoid scores")
    boxes: str = setting(help="Output with N x 4*(reg_max+1) box-side distributions")


@dataclass(frozen=True)
class NanoDetSection:
    reg_max: int = setting(7, gt=0)
    heads: list[NanoDetHead] = setting(factory=list)
    centre_offset: float = setting(
        0.0, ge=0, le=1, help="Anchor centre = (cell + centre_offset) * stride")


@dataclass(frozen=True)
class ModelManifest:
    name: str
    file: Path
    sha256: str
    decoder: Decoder
    source: str = setting(help="Where the file came from, precisely enough to fetch it again")
    licence: str = setting()
    input_name: str = setting()
    input_size: tuple[int, int] = setting(help="width, height")
    input_layout: str = setting("NCHW")
    channel_order: str = setting("RGB", help="RGB or BGR")
    mean: tuple[float, float, float] = setting((0.0, 0.0, 0.0))
    std: tuple[float, float, float] = setting((255.0, 255.0, 255.0))
    resize: Resize = setting(Resize.STRETCH)
    classes: list[str] = setting(factory=list, help="Class names; YOLO exports may leave them to metadata")
    output: str = setting("", help="YOLO: the output tensor name (default: the graph's first output)")
    nanodet: NanoDetSection | None = setting(None)
    precision: Precision = setting(
        Precision.FP32,
        help="int8: quantised with uint8 activations (tools/quantize_model.py). onnxruntime's x86 "
             "int8 kernels can saturate their sums on CPUs without VNNI and lose accuracy, which "
             "`edge-agent check` and the start log warn about")

    def __post_init__(self):
        if self.input_layout not in ("NCHW", "NHWC"):
            raise ValueError(f"input_layout: must be NCHW or NHWC, got {self.input_layout!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order: must be RGB or BGR, got {self.channel_order!r}")
        if self.decoder is Decoder.NANODET and (self.nanodet is None or not self.nanodet.heads):
            raise ValueError("nanodet: a nanodet model needs [[nanodet.heads]] tables")


def int8_risk(manifest: ModelManifest, machine: str, cpu_flags: set[str]) -> str | None:
    """Why this int8 model may detect worse on this CPU than it was measured to, or None.

    On x86 without VNNI (Intel before Cascade Lake, AMD before Zen 4) onnxruntime multiplies
    uint8 by int8 with instructions whose 16-bit intermediate sums saturate; the model was
    checked against fp32 only on a CPU with VNNI (docs/performance.md)."""
    if manifest.precision is not Precision.INT8 or machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    if cpu_flags & {"avx512_vnni", "avx_vnni"}:
        return None
    return (f"{manifest.name} is int8 and this CPU has no VNNI: its accuracy was checked only on "
            "CPUs with VNNI; use the fp32 manifest or check it here (tests/test_detector_int8.py)")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where the file is not there."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def load_manifest(path: Path) -> ModelManifest:
    return load_dataclass(ModelManifest, read_toml(path), path, base_dir=path.parent)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(manifest: ModelManifest, manifest_path: Path) -> None:
    if not manifest.file.is_file():
        raise ConfigError(manifest_path, "file", f"model file not found: {manifest.file}")
    actual = sha256_of(manifest.file)
    if actual != manifest.sha256.lower():
        raise ConfigError(manifest_path, "sha256",
                          f"{manifest.file.name} has sha256 {actual}, manifest says {manifest.sha256} "
                          "(truncated or replaced file?)")
