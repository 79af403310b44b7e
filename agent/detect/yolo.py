"""Ultralytics YOLO ONNX exports (``yolo export format=onnx``), v8 and later.

The single output is 1 x (4 + nc) x N: per anchor a box as centre x, centre y, width, height in
input pixels, then nc class scores, already sigmoid. No objectness column (that was YOLOv5).
Class names are in the model's metadata as a Python dict literal, e.g. ``{0: 'person', ...}``.
"""

from __future__ import annotations

import ast

import numpy as np


def class_names_from_metadata(metadata: dict[str, str]) -> list[str]:
    """The ``names`` an Ultralytics export writes into the ONNX metadata, in class-id order."""
    raw = metadata.get("names")
    if not raw:
        return []
    names = ast.literal_eval(raw)
    return [str(names[i]) for i in sorted(names)]


def decode(output: np.ndarray, num_classes: int, min_score: float):
    """Candidate boxes in input-tensor pixels: (xyxy (N,4), score (N,), class_id (N,))."""
    if output.ndim != 3 or output.shape[0] != 1 or output.shape[1] != 4 + num_classes:
        raise ValueError(f"expected output of shape (1, {4 + num_classes}, N), got {output.shape}")
    rows = output[0].T  # (N, 4 + nc)
    scores = rows[:, 4:]
    class_id = scores.argmax(axis=1)
    best = scores[np.arange(len(rows)), class_id]
    keep = best >= min_score
    cx, cy, w, h = rows[keep, :4].T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return xyxy.astype(np.float32), best[keep].astype(np.float32), class_id[keep].astype(np.int32)
