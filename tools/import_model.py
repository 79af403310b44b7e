"""Write a manifest for an operator's own Ultralytics YOLO ONNX export.

    python tools/import_model.py my-ebike.onnx --source "trained on site data 2026-10" --licence AGPL-3.0

reads the export's metadata (class names, input size), computes the sha256 and writes
``my-ebike.toml`` beside the model. Point a ``[models.<name>]`` table of edge.toml at it.
Exports come from ``yolo export model=best.pt format=onnx`` on a training machine; the box itself
never needs torch or ultralytics.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path

import onnxruntime as ort

from agent.detect.manifest import sha256_of
from agent.detect.yolo import class_names_from_metadata


def yolo_manifest_text(model: Path, name: str, source: str, licence: str, manifest_dir: Path) -> str:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = class_names_from_metadata(meta)
    if not classes:
        raise SystemExit(f"{model}: no 'names' in the ONNX metadata: is it an Ultralytics export?")
    (inp,) = session.get_inputs()
    if "imgsz" in meta:
        height, width = ast.literal_eval(meta["imgsz"])
    else:
        height, width = inp.shape[2], inp.shape[3]
    lines = [
        f"name = {json.dumps(name)}",
        f"file = {json.dumps(os.path.relpath(model.resolve(), manifest_dir.resolve()))}",
        f'sha256 = "{sha256_of(model)}"',
        'decoder = "yolo"',
        f"source = {json.dumps(source)}",
        f"licence = {json.dumps(licence)}",
        f"input_name = {json.dumps(inp.name)}",
        f"input_size = [{width}, {height}]  # width, height",
        'input_layout = "NCHW"',
        'channel_order = "RGB"',
        "mean = [0.0, 0.0, 0.0]",
        "std = [255.0, 255.0, 255.0]",
        'resize = "letterbox"',
        f"output = {json.dumps(session.get_outputs()[0].name)}",
        "classes = [" + ", ".join(json.dumps(c, ensure_ascii=False) for c in classes) + "]",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", help="model name in tickets (default: the file's stem)")
    parser.add_argument("--source", required=True, help="where the weights came from")
    parser.add_argument("--licence", required=True)
    parser.add_argument("--output", type=Path, help="manifest path (default: beside the model)")
    args = parser.parse_args(argv)
    out = args.output or args.model.with_suffix(".toml")
    text = yolo_manifest_text(args.model, args.name or args.model.stem, args.source, args.licence, out.parent)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
