"""Train the test fixture tests/data/ebike-yolov8n-256.onnx: a one-class ("ebike") YOLOv8n.

    .venv-train/bin/python tools/train_ebike_fixture.py

A FIXTURE, not a field model: trained from scratch (yolov8n.yaml, no pretrained weights) on
composites of real pixels: lift-floor-like patches (tests/lift_scenes.py's FLOORS: vtest lawn and
tarmac, dog.jpg porch) with the dog.jpg bicycle cut out by the scenario kit pasted at varied
sizes, angles, flips and places, auto-labelled from the placement, plus person.jpg cut-outs as
unlabelled distractors. It proves the lift rule's custom-model path end to end; it knows one
bicycle's look and nothing about a ceiling fisheye.

The dataset is rendered by the project venv (it has av and the scenario kit); training and the
export run in the training venv (torch, ultralytics; tools/test.sh makes .venv-train), which the
agent never needs, through tools/train_model.py (offline, the network refused). The export is not
simplified (train_model's, with no onnxslim in the training venv), unlike the committed file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 256
OUT = REPO / "tests" / "data" / f"ebike-yolov8n-{IMGSZ}.onnx"
TRAIN_SEED, VAL_SEED = 1000, 2000  # the test uses seeds >= 5000
N_TRAIN, N_VAL = 220, 60


def composite(rng, label_people: bool = False):
    """(image, [yolo label rows]) of one frame: the bicycle as class 0; with ``label_people`` the
    people as class 1 too (the fixture leaves them unlabelled, as distractors)."""
    import cv2
    import numpy as np

    from tests import lift_scenes as ls
    from tools.scenario_kit import paste

    floor = ls.floor_picture(list(ls.FLOORS)[rng.integers(len(ls.FLOORS))], rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:
        floor = cv2.flip(floor, int(rng.integers(-1, 2)))
    labels = []
    layers = []
    if rng.random() < 0.85:
        bike = ls.sprite("bicycle", rng.uniform(0.9, 1.9), rng.uniform(-45, 45))
        if rng.random() < 0.5:
            bike = ls.Sprite(bike.pixels[:, ::-1].copy(), bike.alpha[:, ::-1].copy(), None)
        h, w = bike.alpha.shape
        at = (rng.uniform(w * 0.3, ls.FRAME_W - w * 0.3), rng.uniform(h * 0.7, ls.FRAME_H + h * 0.2))
        layers.append((bike, at, True))
    for _ in range(rng.integers(0, 3)):
        person = ls.sprite("person", rng.uniform(0.8, 1.6), rng.uniform(-20, 20) if rng.random() < 0.3 else 0.0)
        h, w = person.alpha.shape
        layers.append((person, (rng.uniform(0, ls.FRAME_W), rng.uniform(h * 0.5, ls.FRAME_H + h * 0.2)), False))
    order = rng.permutation(len(layers))
    frame = floor.copy()
    for i in order:
        s, at, is_bike = layers[i]
        paste(frame, s, at, 2.0, rng)
        if is_bike or label_people:
            x1, y1, x2, y2 = ls.box_of(s, at)
            x1, y1 = max(0, x1), max(0, y1)
            x2, y2 = min(ls.FRAME_W, x2), min(ls.FRAME_H, y2)
            if x2 - x1 > 8 and y2 - y1 > 8:
                labels.append(f"{0 if is_bike else 1} {(x1 + x2) / 2 / ls.FRAME_W:.6f} {(y1 + y2) / 2 / ls.FRAME_H:.6f} "
                              f"{(x2 - x1) / ls.FRAME_W:.6f} {(y2 - y1) / ls.FRAME_H:.6f}")
    noisy = frame.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 2, frame.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def build_dataset(root: Path) -> None:
    """Runs in the project venv."""
    import cv2
    import numpy as np

    for split, seed, n in (("train", TRAIN_SEED, N_TRAIN), ("val", VAL_SEED, N_VAL)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        boxes = 0
        for i in range(n):
            image, labels = composite(rng)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(labels) + ("\n" if labels else ""))
            boxes += len(labels)
        print(f"{split}: {n} images, {boxes} ebike boxes", file=sys.stderr)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: ebike\n")


def train(root: Path, minutes: float) -> None:
    """Runs in the training venv, offline, with tools/train_model.py's train and export."""
    import torch

    from tools import train_model

    tried = train_model.forbid_network()
    train_model.offline_ultralytics(root / "cfg")
    torch.set_num_threads(1)
    best = train_model.train(root / "data.yaml", root / "runs", "yolov8n.yaml", epochs=300, imgsz=IMGSZ,
                             patience=1000, hours=minutes / 60, mosaic=1.0, close_mosaic=0, degrees=0.0,
                             fliplr=0.5)
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(data=str(root / "data.yaml"), imgsz=IMGSZ, batch=16, workers=0, device="cpu",
                                  plots=False, verbose=False, project=str(root / "runs"), name="val", exist_ok=True)
    print(f"held-out ({N_VAL} images, seed {VAL_SEED}): precision {metrics.box.mp:.3f} recall {metrics.box.mr:.3f} "
          f"mAP50 {metrics.box.map50:.3f}", file=sys.stderr)
    train_model.export(best, OUT)
    if tried:
        raise SystemExit("network use was refused: " + "; ".join(tried))


def main() -> int:
    sys.path.insert(0, str(REPO))
    if len(sys.argv) > 2 and sys.argv[1] == "--build-dataset":
        build_dataset(Path(sys.argv[2]))
        return 0
    minutes = float(os.environ.get("TRAIN_MINUTES", "8"))
    with tempfile.TemporaryDirectory(prefix="ebike-fixture.") as tmp:
        root = Path(tmp)
        subprocess.run([str(REPO / ".venv" / "bin" / "python"), __file__, "--build-dataset", str(root)],
                       check=True, cwd=REPO)
        train(root, minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
