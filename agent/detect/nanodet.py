"""NanoDet / GFL head decoding.

Each stride's head gives, per anchor point, sigmoid class scores and, per box side, a discrete
distribution over ``reg_max + 1`` distances; the distance is the distribution's expectation
(softmax-integral, as in Generalized Focal Loss), in units of the stride.
"""

from __future__ import annotations

import numpy as np

from agent.detect.manifest import ModelManifest


def decode(outputs: dict[str, np.ndarray], manifest: ModelManifest, min_score: float):
    """Candidate boxes in input-tensor pixels: (xyxy (N,4), score (N,), class_id (N,))."""
    spec = manifest.nanodet
    assert spec is not None  # the manifest refuses a nanodet model without [nanodet]
    width, height = manifest.input_size
    bins = np.arange(spec.reg_max + 1, dtype=np.float32)
    all_boxes, all_scores, all_ids = [], [], []
    for head in spec.heads:
        scores = outputs[head.scores].reshape(-1, len(manifest.classes))
        dist = outputs[head.boxes].reshape(-1, 4, spec.reg_max + 1)
        cols = int(np.ceil(width / head.stride))
        rows = int(np.ceil(height / head.stride))
        if rows * cols != len(scores):
            raise ValueError(f"head stride {head.stride}: expected {rows}x{cols} anchors, got {len(scores)}")
        class_id = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), class_id]
        keep = best >= min_score
        if not keep.any():
            continue
        ys, xs = np.divmod(np.nonzero(keep)[0], cols)
        centres = (np.stack([xs, ys], axis=1).astype(np.float32) + spec.centre_offset) * head.stride
        logits = dist[keep]
        prob = np.exp(logits - logits.max(axis=2, keepdims=True))
        prob /= prob.sum(axis=2, keepdims=True)
        sides = (prob @ bins) * head.stride  # (K, 4): left, top, right, bottom
        all_boxes.append(np.concatenate([centres - sides[:, :2], centres + sides[:, 2:]], axis=1))
        all_scores.append(best[keep])
        all_ids.append(class_id[keep])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    return (np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32),
            np.concatenate(all_ids).astype(np.int32))
