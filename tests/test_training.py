"""Retraining (tools/train_model.py): data set building here, a one-epoch run in the training venv.

The data-set tests are pure logic on small encoded images. The one-epoch test is the whole loop
on real frames: a technician's labelled folder (real-pixel lift composites, tools/train_ebike_fixture
with the people labelled too) and a hard negative the agent itself kept when the platform rejected
a ticket on vtest; Ultralytics trains for one epoch at 64 px in .venv-train ($EDGE_TRAIN_VENV), with
the network refused, exports to ONNX, and the agent loads the registered model and replays a
scenario with it. Its detections are meaningless after one epoch: it checks the plumbing, not recall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agent.app import Agent
from agent.clock import ManualClock
from agent.config import load_config
from agent.detect import load_detector
from agent.detect.yolo import class_names_from_metadata
from tests.helpers import REPO, write_camera, write_edge
from tests.test_commands import START, command, feed
from tools.evaluate import evaluate_scenario
from tools.train_ebike_fixture import composite
from tools.train_model import DatasetError, background_share, build_dataset, register

TRAIN_VENV = Path(os.environ.get("EDGE_TRAIN_VENV", REPO / ".venv-train"))
TRAIN_PYTHON = TRAIN_VENV / "bin" / "python"
TRAIN_MODEL = REPO / "tools" / "train_model.py"


def write_image(path: Path, key: str) -> Path:
    """A small noise picture, the same for the same ``key``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(zlib.crc32(key.encode())).integers(0, 255, (24, 32, 3), np.uint8))
    return path


def label_studio_folder(root: Path, names: list[str], labels: dict[str, str]) -> Path:
    """images/ + labels/ + classes.txt, as Label Studio and Ultralytics export."""
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(n + "\n" for n in names))
    for stem, text in labels.items():
        write_image(root / "images" / f"{stem}.jpg", stem)
        (root / "labels" / f"{stem}.txt").write_text(text)
    return root


def dataset_labels(out: Path) -> dict[str, list[str]]:
    """{split/stem: label lines} of a written data set."""
    return {f"{p.parent.name}/{p.stem}": p.read_text().splitlines() for p in sorted(out.glob("labels/*/*.txt"))}


# --------------------------------------------------------------------------- data set (pure logic)

def test_folders_merge_by_class_name_not_id(tmp_path):
    a = label_studio_folder(tmp_path / "a", ["ebike"], {"a1": "0 0.5 0.5 0.2 0.3\n", "a2": ""})
    # CVAT's YOLO 1.1 layout: obj.names, labels beside the images; its id 0 is person
    b = tmp_path / "b"
    (b / "obj_train_data").mkdir(parents=True)
    (b / "obj.names").write_text("person\nebike\n")
    write_image(b / "obj_train_data" / "b1.png", "b1")
    (b / "obj_train_data" / "b1.txt").write_text("0 0.1 0.2 0.1 0.1\n1 0.6 0.6 0.3 0.3\n")

    summary = build_dataset([a, b], [], tmp_path / "out", val_fraction=0.5)

    assert summary["classes"] == ["ebike", "person"]
    lines = sorted(line for ls in dataset_labels(tmp_path / "out").values() for line in ls)
    assert lines == ["0 0.500000 0.500000 0.200000 0.300000", "0 0.600000 0.600000 0.300000 0.300000",
                     "1 0.100000 0.200000 0.100000 0.100000"]
    counts = summary["splits"]
    assert sum(s["images"] for s in counts.values()) == 3 and all(s["images"] for s in counts.values())
    assert sum(s["boxes"]["person"] for s in counts.values()) == 1
    yaml = (tmp_path / "out" / "data.yaml").read_text()
    assert 'names:\n  0: "ebike"\n  1: "person"\n' in yaml and "train: images/train" in yaml


@pytest.mark.parametrize("text, reason", [
    ("0 0.5 0.5 0.2\n", "want 'class cx cy w h', got 4 values"),
    ("0 0.1 0.1 0.2 0.1 0.3 0.3\n", "polygons are segmentation labels"),
    ("1 0.5 0.5 0.2 0.2\n", "class 1 is not among the 1 class names"),
    ("0 0.5 0.5 0 0.2\n", "is not normalised"),
    ("0 0.5 0.5 1.5 0.2\n", "is not normalised"),
    ("zero 0.5 0.5 0.2 0.2\n", "not numbers"),
])
def test_a_bad_label_line_is_named_with_its_file_and_line(tmp_path, text, reason):
    folder = label_studio_folder(tmp_path / "lab", ["ebike"], {"x": "0 0.5 0.5 0.1 0.1\n\n" + text})
    with pytest.raises(DatasetError) as error:
        build_dataset([folder], [], tmp_path / "out")
    assert f"{folder / 'labels' / 'x.txt'}:3: " in str(error.value) and reason in str(error.value)


def test_an_image_without_labels_is_refused_not_taken_as_background(tmp_path):
    folder = label_studio_folder(tmp_path / "lab", ["ebike"], {"x": ""})
    write_image(folder / "images" / "forgotten.jpg", "forgotten")
    with pytest.raises(DatasetError, match=r"forgotten\.jpg: no label file .*needs an empty one"):
        build_dataset([folder], [], tmp_path / "out")


def test_an_image_keeps_its_split_when_the_data_set_grows(tmp_path):
    few = {f"f{i}": "0 0.5 0.5 0.2 0.2\n" for i in range(10)}
    small = label_studio_folder(tmp_path / "small", ["ebike"], few)
    build_dataset([small], [], tmp_path / "out1")
    more = label_studio_folder(tmp_path / "small2", ["ebike"], {**few, **{f"g{i}": "" for i in range(30)}})
    # same stems -> the same ten pictures are in both folders
    assert {p.read_bytes() for p in (small / "images").iterdir()} <= {p.read_bytes() for p in (more / "images").iterdir()}
    build_dataset([more], [], tmp_path / "out2")
    first, second = dataset_labels(tmp_path / "out1"), dataset_labels(tmp_path / "out2")
    assert set(first) <= set(second)  # split/stem, stem from the content hash: nothing moved split


def hard_negative(root: Path, ticket: str, rule: str, camera: str = "cam1", labels: str | None = None) -> None:
    folder = root / ticket
    write_image(folder / "frame.jpg", ticket)
    (folder / "boxes.json").write_text(json.dumps({"camera": camera, "zone": "z", "rule": rule, "class": "bicycle",
                                                   "boxes": [[1, 2, 10, 12]], "frame_size": [32, 24]}))
    if labels is not None:
        (folder / "frame.txt").write_text(labels)


def test_hard_negatives_come_in_without_boxes_filtered_by_rule_and_camera(tmp_path):
    labelled = label_studio_folder(tmp_path / "lab", ["ebike", "person"], {"a": "0 0.5 0.5 0.2 0.2\n", "b": ""})
    negatives = tmp_path / "var" / "hard_negatives"
    hard_negative(negatives, "t-lift", "lift_ebike")
    hard_negative(negatives, "t-reviewed", "lift_ebike", labels="1 0.5 0.5 0.4 0.8\n")
    hard_negative(negatives, "t-other-rule", "object_dwell")
    hard_negative(negatives, "t-other-camera", "lift_ebike", camera="cam2")
    (negatives / "t-pruned").mkdir()  # its raw frame was gone when the rejection came

    summary = build_dataset([labelled], [negatives], tmp_path / "out", rules={"lift_ebike"}, cameras={"cam1"})

    assert sum(s["hard_negatives"] for s in summary["splits"].values()) == 2
    assert background_share(summary) == 2 / 4  # labelled "b" and the unreviewed lift negative
    negative_labels = {k: v for k, v in dataset_labels(tmp_path / "out").items() if "hard_negative-" in k}
    assert sorted(negative_labels.values()) == [[], ["1 0.500000 0.500000 0.400000 0.800000"]]


def test_the_network_guard_refuses_lookups_and_url_opens():
    code = ("import urllib.request\nfrom tools.train_model import forbid_network\ntried = forbid_network()\n"
            "try:\n    urllib.request.urlopen('https://github.com/ultralytics/assets/releases/Arial.ttf')\n"
            "except PermissionError as e:\n    print('refused:', e)\nprint(tried)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert "refused: train_model: network use refused: URL open of 'https://github.com" in done.stdout, done.stderr
    assert "URL open" in done.stdout.splitlines()[-1]


# --------------------------------------------------------------------------- one epoch, for real

needs_train_venv = pytest.mark.skipif(
    not TRAIN_PYTHON.is_file(),
    reason=f"no training venv at {TRAIN_VENV} (tools/test.sh creates it; or python3 -m venv .venv-train && "
           ".venv-train/bin/pip install torch==2.14.1 torchvision==0.29.1 'ultralytics>=8.3' 'onnx>=1.15'; "
           "EDGE_TRAIN_VENV points elsewhere)")


def technician_folder(root: Path, count: int) -> Path:
    """Labelled lift composites of real pixels, as a labelling tool would export them."""
    rng = np.random.default_rng(4242)  # none of train_ebike_fixture's or test_ebike_model's seeds
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "classes.txt").write_text("ebike\nperson\n")
    for i in range(count):
        image, rows = composite(rng, label_people=True)
        cv2.imwrite(str(root / "images" / f"lift-{i:03d}.jpg"), image)
        (root / "labels" / f"lift-{i:03d}.txt").write_text("".join(r + "\n" for r in rows))
    return root


def rejected_ticket_on_vtest(folder: Path, frames: list) -> Path:
    """The agent's own hard negative: a person-dwell ticket on vtest that the platform rejects.
    A technician reviewed it: the people are real, so its frame.txt labels them as person."""
    folder.mkdir()
    cam = write_camera(folder, "cam1", "/nonexistent.mp4", dwell=2, polygon="[[0, 150], [768, 150], [768, 576], [0, 576]]")
    agent = Agent(load_config(write_edge(folder, [cam])), clock=ManualClock(START))
    ticket = next(d["ticket_id"] for d in feed((agent, agent.clock), frames) if d["event"] == "opened")
    assert command(agent, "reject", ticket_id=ticket, duration_s=60)["ok"]
    kept = folder / "var" / "hard_negatives" / ticket
    facts = json.loads((kept / "boxes.json").read_text())
    (w, h), rows = facts["frame_size"], []
    for x1, y1, x2, y2 in facts["boxes"]:
        rows.append(f"1 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    (kept / "frame.txt").write_text("".join(rows))
    return kept.parent


def no_network_prefix() -> list[str]:
    """An empty network namespace when the kernel gives one, so even a child process cannot connect."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0:
            return prefix
    return []


def run_training_venv(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*no_network_prefix(), str(TRAIN_PYTHON), str(TRAIN_MODEL), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "network use" not in done.stderr
    return done


@needs_train_venv
def test_one_epoch_on_real_frames_exports_a_model_the_agent_runs(tmp_path, vtest_2fps):
    negatives = rejected_ticket_on_vtest(tmp_path / "box", vtest_2fps[:20])
    summary = build_dataset([technician_folder(tmp_path / "labelled", 16)], [negatives], tmp_path / "data",
                            rules={"object_dwell"})
    assert summary["classes"] == ["ebike", "person"]
    assert sum(s["hard_negatives"] for s in summary["splits"].values()) == 1

    runs = tmp_path / "runs"
    run_training_venv("train", "--data", str(tmp_path / "data" / "data.yaml"), "--model", "yolo11n.yaml",
                      "--epochs", "1", "--imgsz", "64", "--batch", "8", "--out", str(runs))
    run_training_venv("export", "--weights", str(runs / "train" / "weights" / "best.pt"), "--out",
                      str(runs / "lift.onnx"))
    manifest = register(runs / "lift.onnx", "lift-test", "AGPL-3.0", tmp_path / "models")

    assert "1 epochs at 64 px" in manifest.read_text() and "1 hard negatives" in manifest.read_text()
    session = ort.InferenceSession(str(tmp_path / "models" / "lift-test.onnx"), providers=["CPUExecutionProvider"])
    assert class_names_from_metadata(session.get_modelmeta().custom_metadata_map) == ["ebike", "person"]
    detector = load_detector(manifest, min_score=0.01)
    assert detector.class_names == ("ebike", "person") and detector.manifest.input_size == (64, 64)
    found = detector.detect(vtest_2fps[30])
    assert found.xyxy.shape[1] == 4 and set(found.class_id.tolist()) <= {0, 1}

    recipe = (REPO / "scenarios" / "lift_ebike_car.toml").read_text()
    assert recipe.count('classes = ["bicycle", "motorcycle"]') == 1
    (tmp_path / "lift_custom.toml").write_text(recipe.replace('classes = ["bicycle", "motorcycle"]', 'classes = ["ebike"]'))
    result = evaluate_scenario(tmp_path / "lift_custom.toml", tmp_path / "scenarios", manifest=manifest)
    assert result.error is None and len(result.matching.matches) == 1
