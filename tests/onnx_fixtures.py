"""Tiny ONNX models that look like an Ultralytics YOLO detection export.

``make_yolo_like_onnx`` writes a graph with the same interface as
``YOLO(...).export(format="onnx")`` for a detection model (see
tools/export_yolo_fixture.sh and tests/data/yolov8n-untrained-320.onnx):

* input  ``images``  float32 ``[B, 3, H, W]``
* output ``output0`` float32 ``[B, 4 + nc, N]`` -- here a constant we choose
* ``metadata_props`` with the keys Ultralytics 8.4 writes, each value being
  ``str()`` of the Python value, e.g. ``names`` = ``"{0: 'person', 1: 'car'}"``,
  ``imgsz`` = ``"[320, 320]"``, ``stride`` = ``"32"``, ``task`` = ``"detect"``.

The output is returned bit for bit, whatever the pixel values: the graph is

    batch   = Gather(Shape(images), 0)      # depends on the input only through its shape
    output0 = Gather(C, Range(0, batch, 1), axis=0)   # C = the constant we choose, copied

so onnxruntime needs (and checks the shape of) the ``images`` feed, yet no
arithmetic touches C. ``C + 0 * ReduceSum(images)`` would turn an Inf/NaN
pixel into an all-NaN output and ``-0.0`` into ``+0.0``; even
``Where(Size(images) > 0, C, C)`` loses the sign of ``-0.0`` in onnxruntime
1.31, whereas Gather is a plain copy (checked with NaN payloads, -0.0, +-Inf,
with graph optimizations on and off).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# What tools/export_yolo_fixture.sh produced with torch 2.13.0 / ultralytics 8.4.190.
OPSET = 12
IR_VERSION = 7
ULTRALYTICS_VERSION = "8.4.190"


def make_yolo_like_onnx(
    path: str | Path,
    output: np.ndarray,
    names: Mapping[int, str],
    imgsz: tuple[int, int] = (320, 320),
    *,
    stride: int = 32,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ONNX model whose ``output0`` is always ``output``; return its path.

    Args:
        path: where to write the ``.onnx`` file (parent directories are made).
        output: the constant output, shape ``(B, 4 + nc, N)``; stored as float32
            (the model returns ``output.astype(np.float32)``). Its shape is not
            checked against ``names``, so malformed models can be built on purpose.
        names: class index -> name, written as Ultralytics does (``str(dict)``).
        imgsz: ``(height, width)`` of the ``images`` input, also written as ``imgsz``.
        stride: written as ``stride``.
        metadata: extra metadata_props, or overrides of the defaults; values are
            written with ``str()`` like Ultralytics does. A value of ``None``
            removes that key.
    """
    path = Path(path)
    const = np.ascontiguousarray(np.asarray(output, dtype=np.float32))
    if const.ndim != 3:
        raise ValueError(f"output must be 3-D (B, 4 + nc, N), got shape {const.shape}")
    height, width = (int(v) for v in imgsz)
    batch = int(const.shape[0])

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])
    output0 = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(const.shape))
    initializers = [
        numpy_helper.from_array(const, name="constant_output"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), name="zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), name="one"),
    ]
    nodes = [
        helper.make_node("Shape", ["images"], ["images_shape"], name="shape"),
        helper.make_node("Gather", ["images_shape", "zero"], ["batch"], name="batch", axis=0),
        helper.make_node("Range", ["zero", "batch", "one"], ["batch_index"], name="batch_index"),
        helper.make_node("Gather", ["constant_output", "batch_index"], ["output0"], name="output", axis=0),
    ]
    graph = helper.make_graph(nodes, "yolo_like_constant", [images], [output0], initializer=initializers)
    model = helper.make_model(
        graph,
        producer_name="tests.onnx_fixtures",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION  # onnx's default is newer than some onnxruntime builds accept

    names_dict = {int(k): str(v) for k, v in names.items()}
    props: dict[str, Any] = {  # same keys, order and value formats as Ultralytics' ONNX export
        "description": "Ultralytics YOLOv8n model ",
        "author": "Ultralytics",
        "date": "2026-01-01T00:00:00+00:00",
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": int(stride),
        "task": "detect",
        "head": "Detect",
        "batch": batch,
        "imgsz": [height, width],
        "names": names_dict,
        "args": {
            "data": None,
            "batch": batch,
            "fraction": 1.0,
            "quantize": None,
            "nms": None,
            "dynamic": False,
            "simplify": True,
            "opset": OPSET,
        },
        "channels": 3,
        "end2end": False,
    }
    for key, value in (metadata or {}).items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    onnx.helper.set_model_props(model, {key: str(value) for key, value in props.items()})

    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
