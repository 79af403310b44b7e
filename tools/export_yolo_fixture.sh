#!/usr/bin/env bash
# Build the test fixture tests/data/yolov8n-untrained-320.onnx.
#
# An UNTRAINED YOLOv8n (built from Ultralytics' architecture yaml, random
# weights with a fixed seed, no weights download) exported to ONNX at 320x320.
# Its outputs are meaningless; it only pins the graph layout our decoder reads:
# input "images" 1x3x320x320, output "output0" 1x84x2100, and the
# metadata_props Ultralytics writes (names, imgsz, stride, task, ...).
#
# Everything happens in a throwaway venv in a temp dir. torch is installed
# first, at exactly TORCH_VERSION, from the CPU wheel in TORCH_WHEEL_DIR; the
# later installs are constrained to that very torch so pip cannot swap it.
# The export itself runs with Ultralytics told it is offline (YOLO_OFFLINE,
# sync=False, no auto-install) and, where the kernel allows it, inside an
# empty network namespace, so it cannot touch the network at all.
#
# Usage: tools/export_yolo_fixture.sh [OUTPUT.onnx]
# Env:   PYTHON (python3.11), TORCH_VERSION (2.13.0), TORCH_WHEEL_DIR
#        (/opt/wheels), TORCHVISION_VERSION (0.28.0), ULTRALYTICS_VERSION
#        (8.4.190), ONNX_VERSION (1.23.2), ONNXSLIM_VERSION (0.1.98),
#        ONNXRUNTIME_VERSION (1.31.1), IMGSZ (320), OPSET (12), SIMPLIFY (1),
#        SEED (0), NAMES (coco: the 80 COCO class names from Ultralytics'
#        bundled coco.yaml, as a pretrained yolov8n carries; "index": what the
#        bare yaml model carries, {0: '0', ..., 79: '79'}),
#        KEEP_TMP (0: set 1 to keep the temp dir for debugging).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo_root/tests/data/yolov8n-untrained-320.onnx}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"   # the release that pins torch==2.13.0
ULTRALYTICS_VERSION="${ULTRALYTICS_VERSION:-8.4.190}"
ONNX_VERSION="${ONNX_VERSION:-1.23.2}"
ONNXSLIM_VERSION="${ONNXSLIM_VERSION:-0.1.98}"
ONNXRUNTIME_VERSION="${ONNXRUNTIME_VERSION:-1.31.1}"  # Ultralytics requires it for simplify=True
IMGSZ="${IMGSZ:-320}"
OPSET="${OPSET:-12}"
SIMPLIFY="${SIMPLIFY:-1}"
SEED="${SEED:-0}"
NAMES="${NAMES:-coco}"
KEEP_TMP="${KEEP_TMP:-0}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/yolo-fixture.XXXXXX")"
cleanup() {
    if [[ "$KEEP_TMP" == 1 ]]; then
        echo "kept temp dir: $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

log() { printf '\n== %s\n' "$*" >&2; }

log "venv in $tmp/venv ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check --no-input)

# 1. torch first, exactly TORCH_VERSION. A local version such as 2.13.0+cpu
#    sorts above a plain 2.13.0, so with the wheel dir on --find-links pip
#    takes the CPU wheel from disk; its dependencies come from the index.
find_links=()
if [[ -d "$TORCH_WHEEL_DIR" ]]; then
    find_links=(--find-links "$TORCH_WHEEL_DIR")
fi
log "pip install torch==$TORCH_VERSION"
"${pip[@]}" install "${find_links[@]}" --only-binary=torch "torch==$TORCH_VERSION"

torch_installed="$("$py" -c 'import torch; print(torch.__version__)')"
torch_cuda="$("$py" -c 'import torch; print(torch.version.cuda)')"
case "$torch_installed" in
    "$TORCH_VERSION" | "$TORCH_VERSION"+*) ;;
    *) echo "error: got torch $torch_installed, wanted $TORCH_VERSION" >&2; exit 1 ;;
esac
if [[ "$torch_cuda" != None ]]; then
    echo "error: torch $torch_installed is a CUDA build ($torch_cuda); want the CPU wheel" >&2
    exit 1
fi
echo "torch $torch_installed (cuda: $torch_cuda)" >&2

# 2. The rest, constrained to the torch just installed (exact local version),
#    so no dependency can make pip replace it.
constraints="$tmp/constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$torch_installed" "$TORCHVISION_VERSION" >"$constraints"
log "pip install ultralytics==$ULTRALYTICS_VERSION onnx onnxslim onnxruntime"
"${pip[@]}" install "${find_links[@]}" -c "$constraints" \
    "torchvision==$TORCHVISION_VERSION" \
    "ultralytics==$ULTRALYTICS_VERSION" \
    "onnx==$ONNX_VERSION" \
    "onnxslim==$ONNXSLIM_VERSION" \
    "onnxruntime==$ONNXRUNTIME_VERSION"

torch_after="$("$py" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_after" != "$torch_installed" ]]; then
    echo "error: torch changed from $torch_installed to $torch_after" >&2
    exit 1
fi

# 3. Export, offline. Settings and caches live in the temp dir.
export YOLO_OFFLINE=1          # ultralytics.utils.ONLINE = False: no events, no update check
export YOLO_AUTOINSTALL=0      # never pip-install a missing requirement
export YOLO_VERBOSE=1
export YOLO_CONFIG_DIR="$tmp/yolo-config"
export MPLCONFIGDIR="$tmp/mpl"
export HF_HUB_OFFLINE=1
mkdir -p "$YOLO_CONFIG_DIR" "$MPLCONFIGDIR" "$tmp/work"

# No network at all for the export, when an empty network namespace can be had.
nonet=()
if command -v unshare >/dev/null 2>&1 && unshare -n true 2>/dev/null; then
    nonet=(unshare -n)
elif command -v unshare >/dev/null 2>&1 && unshare -rn true 2>/dev/null; then
    nonet=(unshare -rn)
else
    echo "note: cannot create a network namespace; relying on YOLO_OFFLINE" >&2
fi

cat >"$tmp/export.py" <<'PY'
import os
import shutil
import sys

import torch
from ultralytics.utils import SETTINGS

SETTINGS.update(sync=False)  # no analytics / crash reports, even if ONLINE were True

import ultralytics
from ultralytics import YOLO
from ultralytics.utils import YAML
from ultralytics.utils.checks import check_yaml

out, imgsz, opset, simplify, seed, names = sys.argv[1:7]
imgsz, opset, simplify, seed = int(imgsz), int(opset), simplify == "1", int(seed)
torch.manual_seed(seed)  # random init of the untrained weights, made repeatable

model = YOLO("yolov8n.yaml")  # architecture only: no weights download
if names == "coco":  # the class names a pretrained yolov8n carries; coco.yaml ships inside the package
    model.model.names = YAML.load(check_yaml("coco.yaml"))["names"]
elif names != "index":
    sys.exit(f"NAMES must be coco or index, not {names!r}")
exported = model.export(format="onnx", imgsz=imgsz, opset=opset, simplify=simplify, dynamic=False, device="cpu")
shutil.copyfile(exported, out)
print(f"torch {torch.__version__}, ultralytics {ultralytics.__version__}: wrote {out}", file=sys.stderr)
PY

mkdir -p "$(dirname "$out")"
log "export yolov8n.yaml -> onnx (imgsz=$IMGSZ opset=$OPSET simplify=$SIMPLIFY)${nonet:+ in an empty network namespace}"
(cd "$tmp/work" && "${nonet[@]}" "$py" "$tmp/export.py" "$out.tmp" "$IMGSZ" "$OPSET" "$SIMPLIFY" "$SEED" "$NAMES")
mv -f "$out.tmp" "$out"

# 4. Describe what was written.
log "fixture"
"$py" - "$out" <<'PY'
import os
import sys

import onnx

path = sys.argv[1]
m = onnx.load(path)
onnx.checker.check_model(m)


def shape(v):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]


print(f"file: {path} ({os.path.getsize(path)} bytes)")
print(f"ir_version {m.ir_version}, opsets {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, producer {m.producer_name} {m.producer_version}")
for v in m.graph.input:
    print(f"input  {v.name} {shape(v)} {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)}")
for v in m.graph.output:
    print(f"output {v.name} {shape(v)} {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)}")
for p in m.metadata_props:
    print(f"meta {p.key} = {p.value!r}")
PY
