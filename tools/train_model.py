#!/usr/bin/env python3
"""Retrain a detector from the box's own mistakes and a technician's labels, and register it.

    python tools/train_model.py dataset --labelled LABELLED_DIR... [--hard-negatives var/hard_negatives]
                                        [--classes ebike,person] [--rule lift_ebike] [--camera lift-1]
                                        --out data/ebike
    .venv-train/bin/python tools/train_model.py train --data data/ebike/data.yaml [--model yolo11n.yaml]
                                        [--epochs 100] [--imgsz 640] --out runs/ebike
    .venv-train/bin/python tools/train_model.py export --weights runs/ebike/train/weights/best.pt
                                        --out runs/ebike/ebike.onnx
    python tools/train_model.py register runs/ebike/ebike.onnx --name ebike-lift --licence AGPL-3.0

``dataset`` and ``register`` run in the project venv (``register`` loads the model as the agent
does); ``train`` and ``export`` need torch and Ultralytics, which live in a separate training venv
(``pip install torch==2.14.1 torchvision==0.29.1 -e '.[train]'``, docs/retrain.md): the box never
has them. Stages hand over through files, so each can be rerun alone.

Labelled folders are what labelling tools export in YOLO format: images with one ``.txt`` per image
(``class cx cy w h``, normalised), beside the image or in a ``labels/`` folder mirroring
``images/`` (Label Studio, Ultralytics, CVAT "YOLO 1.1"), and the class names in ``classes.txt`` or
``obj.names``. Folders are merged by class name, not id. Hard negatives are the frames the box keeps
when the platform rejects a ticket (``<storage>/hard_negatives/<ticket>/frame.jpg``): they go in with
no boxes (nothing of the classes is there), unless a technician put a ``frame.txt`` beside one.

Train and export never use the network: Ultralytics is told it is offline, gets local fonts instead
of downloading Arial, builds the model from an architecture yaml (or a local ``.pt``), and a Python
audit hook refuses every socket and URL open, so an attempt fails the command instead of passing
unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/train_model.py`: make `tools` and `agent` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NAME_FILES = ("classes.txt", "obj.names")  # Label Studio / Ultralytics, CVAT YOLO 1.1
DATASET_SUMMARY = "dataset.json"
MAX_BACKGROUND_SHARE = 0.1  # Ultralytics' advice: 0-10 % background images (docs/retrain.md)
OPSET = 12  # what the agent's onnxruntime (>= 1.17) and the RKNN toolchain both take


class DatasetError(ValueError):
    """Bad labelling input: the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class Box:
    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def yolo_line(self) -> str:
        return f"{self.class_id} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


@dataclass(frozen=True)
class Sample:
    image: Path
    boxes: tuple[Box, ...]
    origin: str  # "labelled" or "hard_negative"
    sha256: str


# --------------------------------------------------------------------------- dataset

def read_class_names(folder: Path) -> list[str] | None:
    """The class names a labelling tool wrote into ``folder`` (one per line), or None."""
    for name in NAME_FILES:
        path = folder / name
        if path.is_file():
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(set(names)) != len(names):
                raise DatasetError(f"{path}: a class name is listed twice")
            return names
    return None


def parse_labels(path: Path, id_to_class: list[int]) -> tuple[Box, ...]:
    """The boxes of one YOLO label file, with the folder's class ids mapped through ``id_to_class``."""
    boxes = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: want 'class cx cy w h', got {len(fields)} values "
                               "(polygons are segmentation labels: export boxes, YOLO detection format)")
        try:
            class_id, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise DatasetError(f"{where}: not numbers: {line.strip()!r}") from None
        if not 0 <= class_id < len(id_to_class):
            raise DatasetError(f"{where}: class {class_id} is not among the {len(id_to_class)} class names")
        cx, cy, w, h = coords
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise DatasetError(f"{where}: box {coords} is not normalised to the image (0..1, size > 0)")
        boxes.append(Box(id_to_class[class_id], cx, cy, w, h))
    return tuple(boxes)


def label_file_of(image: Path, folder: Path) -> Path:
    """Where a labelling tool put ``image``'s labels: beside it, or under ``labels/`` for ``images/``."""
    beside = image.with_suffix(".txt")
    parts = list(image.relative_to(folder).parts)
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        mirrored = folder.joinpath(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")
        if mirrored.is_file() or not beside.is_file():
            return mirrored
    return beside


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def labelled_samples(folder: Path, classes: list[str]) -> list[Sample]:
    """Every image of a labelling tool's export, its boxes in ``classes``' ids (``classes`` grows by
    the folder's names it lacks, in the folder's order)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    names = read_class_names(folder)
    if names is None:
        if not classes:
            raise DatasetError(f"{folder}: no {' or '.join(NAME_FILES)}; name the classes with --classes")
        names = list(classes)
    classes.extend(n for n in names if n not in classes)
    id_to_class = [classes.index(n) for n in names]
    samples = []
    for image in images_under(folder):
        labels = label_file_of(image, folder)
        if not labels.is_file():
            raise DatasetError(f"{image}: no label file ({labels}); an image with nothing to label "
                               "needs an empty one")
        samples.append(Sample(image, parse_labels(labels, id_to_class), "labelled", file_sha256(image)))
    if not samples:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return samples


def hard_negative_samples(root: Path, classes: list[str], rules: AbstractSet[str],
                          cameras: AbstractSet[str]) -> list[Sample]:
    """The frames of rejected tickets under ``root`` (the box's ``hard_negatives`` folder), filtered by
    rule and camera when given. A ``frame.txt`` beside one (labels in ``classes``' ids) is used."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (hard negatives live in <storage dir>/hard_negatives)")
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        frame, facts_file = folder / "frame.jpg", folder / "boxes.json"
        if not (frame.is_file() and facts_file.is_file()):
            continue  # the ticket's raw frame was pruned before the rejection came
        try:
            facts = json.loads(facts_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{facts_file}: not JSON: {exc}") from None
        if (rules and facts.get("rule") not in rules) or (cameras and facts.get("camera") not in cameras):
            continue
        labels = folder / "frame.txt"
        boxes = parse_labels(labels, list(range(len(classes)))) if labels.is_file() else ()
        samples.append(Sample(frame, boxes, "hard_negative", file_sha256(frame)))
    return samples


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_of(sample: Sample, val_fraction: float) -> str:
    """By the image's content hash: an image keeps its split when the data set grows, so validation
    never sees a frame an earlier model trained on."""
    return "val" if int(sample.sha256[:8], 16) / 0x1_0000_0000 < val_fraction else "train"


def assign_splits(samples: list[Sample], val_fraction: float) -> dict[str, list[Sample]]:
    """Deduplicated samples by split; both splits get one at least when there are two."""
    unique = list({s.sha256: s for s in samples}.values())
    splits: dict[str, list[Sample]] = {"train": [], "val": []}
    for sample in unique:
        splits[split_of(sample, val_fraction)].append(sample)
    for empty, full in (("val", "train"), ("train", "val")):
        if not splits[empty] and len(splits[full]) > 1:
            # the labelled image nearest the split line moves, so tiny sets still validate
            moved = min((s for s in splits[full] if s.origin == "labelled"), default=splits[full][0],
                        key=lambda s: s.sha256)
            splits[full].remove(moved)
            splits[empty].append(moved)
    return splits


def write_dataset(splits: dict[str, list[Sample]], classes: list[str], out: Path, sources: list[str]) -> dict:
    """Ultralytics' layout under ``out``: images/ and labels/ per split, data.yaml, dataset.json."""
    if out.exists() and any(out.iterdir()) and not (out / DATASET_SUMMARY).is_file():
        raise DatasetError(f"{out}: not empty and not a data set this tool wrote; pick another --out")
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    summary: dict = {"classes": classes, "sources": sources, "splits": {}}
    for split, samples in splits.items():
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for s in samples:
            stem = f"{s.origin}-{s.sha256[:16]}"
            shutil.copyfile(s.image, out / "images" / split / f"{stem}{s.image.suffix.lower()}")
            (out / "labels" / split / f"{stem}.txt").write_text("".join(b.yolo_line() + "\n" for b in s.boxes))
        summary["splits"][split] = {
            "images": len(samples),
            "hard_negatives": sum(s.origin == "hard_negative" for s in samples),
            "background": sum(not s.boxes for s in samples),
            "boxes": {c: sum(b.class_id == i for s in samples for b in s.boxes) for i, c in enumerate(classes)},
        }
    names = "".join(f"  {i}: {json.dumps(c, ensure_ascii=False)}\n" for i, c in enumerate(classes))
    (out / "data.yaml").write_text(f"path: {json.dumps(str(out.resolve()))}\ntrain: images/train\n"
                                   f"val: images/val\nnames:\n{names}", encoding="utf-8")
    (out / DATASET_SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def background_share(summary: dict) -> float:
    """The share of a data set's images with no boxes (hard negatives and empty labelled frames)."""
    images = sum(d["images"] for d in summary["splits"].values())
    return sum(d["background"] for d in summary["splits"].values()) / max(images, 1)


def build_dataset(labelled: list[Path], hard_negatives: list[Path], out: Path, classes: list[str] | None = None,
                  rules: AbstractSet[str] = frozenset(), cameras: AbstractSet[str] = frozenset(),
                  val_fraction: float = 0.2) -> dict:
    """Merge labelled folders and hard negatives into one YOLO data set at ``out``; its summary."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"--val-fraction: must be between 0 and 1, got {val_fraction}")
    names = list(classes or [])
    samples = [s for folder in labelled for s in labelled_samples(folder, names)]
    if not names:
        raise DatasetError("no class names: give --classes or a labelled folder with classes.txt")
    samples += [s for root in hard_negatives for s in hard_negative_samples(root, names, rules, cameras)]
    sources = [str(p.resolve()) for p in [*labelled, *hard_negatives]]
    return write_dataset(assign_splits(samples, val_fraction), names, out, sources)


# --------------------------------------------------------------------------- offline Ultralytics

class NetworkRefused(PermissionError):
    """A training-side library tried to reach the network."""


def forbid_network() -> list[str]:
    """Refuse every non-local socket connection, name lookup and URL open in this process from now
    on; the returned list collects what was tried (a library may swallow the error)."""
    tried: list[str] = []
    local_hosts = {None, "", "localhost", "127.0.0.1", "::1"}

    def hook(event: str, args: tuple) -> None:
        if event == "socket.getaddrinfo" and args[0] not in local_hosts:
            what = f"name lookup of {args[0]!r}"
        elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in local_hosts:
            what = f"connection to {args[1]!r}"
        elif event == "urllib.Request":
            what = f"URL open of {args[0]!r}"
        else:
            return
        tried.append(what)
        raise NetworkRefused(f"train_model: network use refused: {what}")

    sys.addaudithook(hook)
    return tried


def offline_ultralytics(config_dir: Path):
    """Import Ultralytics told it is offline, with its settings in ``config_dir`` and local fonts.

    Ultralytics checks for Arial.ttf on every data set check and downloads it when missing; fonts
    only matter for plots (off here), so matplotlib's bundled DejaVu Sans stands in under both
    names Ultralytics asks for."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0", HF_HUB_OFFLINE="1",
                      YOLO_CONFIG_DIR=str(config_dir), MPLCONFIGDIR=str(config_dir / "matplotlib"))
    import matplotlib
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for font in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (USER_CONFIG_DIR / font).is_file():
            shutil.copyfile(dejavu, USER_CONFIG_DIR / font)
    SETTINGS.update(sync=False)  # no analytics or crash reports
    return ultralytics


def model_source(model: str) -> str:
    """``model`` checked to need no download: an architecture yaml (Ultralytics ships them) or a
    ``.pt`` file that exists here."""
    if model.endswith((".yaml", ".yml")) or Path(model).is_file():
        return model
    raise SystemExit(f"--model {model}: no such file; train_model never downloads weights: give an "
                     "architecture yaml (yolo11n.yaml) or the path of a local .pt")


def train(data: Path, out: Path, model: str = "yolo11n.yaml", epochs: int = 100, imgsz: int = 640,
          batch: int = 16, patience: int = 50, seed: int = 0, hours: float | None = None, **augment) -> Path:
    """Fine-tune (or train from scratch, for a yaml) on the CPU; the best checkpoint's path.
    ``augment``: more Ultralytics train arguments (mosaic=..., degrees=...)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    source = model_source(model)
    yolo = YOLO(source)
    start = time.monotonic()
    yolo.train(data=str(data.resolve()), epochs=epochs, time=hours, imgsz=imgsz, batch=batch, patience=patience,
               workers=0, device="cpu", seed=seed, deterministic=True, pretrained=source.endswith(".pt"),
               amp=False, plots=False, project=str(out.resolve()), name="train", exist_ok=True, verbose=False,
               **augment)
    best = out.resolve() / "train" / "weights" / "best.pt"
    print(f"train_model: trained {source} in {time.monotonic() - start:.0f} s: {best}", file=sys.stderr)
    return best


def export(weights: Path, out: Path, imgsz: int | None = None) -> Path:
    """``weights`` to ONNX at ``out`` (class names in its metadata, as the agent reads them) and a
    ``<out>.training.json`` saying how it was made, for ``register``'s manifest."""
    import onnx
    import torch
    import ultralytics
    from ultralytics import YOLO

    yolo = YOLO(str(weights))
    args = yolo.ckpt.get("train_args", {})
    size = imgsz or int(args.get("imgsz", 640))
    exported = Path(yolo.export(format="onnx", imgsz=size, opset=OPSET, simplify=False, dynamic=False,
                                device="cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(exported, out)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    if "names" not in meta:
        raise SystemExit(f"{out}: the export carries no class names in its metadata")
    summary_file = Path(args.get("data", "")).parent / DATASET_SUMMARY
    training = {
        "architecture": Path(str(args.get("model", "?"))).name, "epochs": args.get("epochs"), "imgsz": size,
        "weights_sha256": file_sha256(weights), "ultralytics": ultralytics.__version__, "torch": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "dataset": json.loads(summary_file.read_text()) if summary_file.is_file() else None,
    }
    out.with_suffix(".training.json").write_text(json.dumps(training, indent=2, ensure_ascii=False) + "\n")
    print(f"train_model: wrote {out} (classes {meta['names']})", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- register

def describe_training(training: dict) -> str:
    """A manifest ``source`` line from an export's training.json."""
    text = (f"trained by tools/train_model.py from {training['architecture']}, {training['epochs']} epochs at "
            f"{training['imgsz']} px, ultralytics {training['ultralytics']}, torch {training['torch']}, "
            f"exported {training['exported_at']}")
    dataset = training.get("dataset")
    if dataset:
        counts = [f"{split} {d['images']} images ({d['hard_negatives']} hard negatives, "
                  + ", ".join(f"{n} {c}" for c, n in d["boxes"].items()) + ")"
                  for split, d in dataset["splits"].items()]
        text += "; data: " + "; ".join(counts)
    return text


def register(model: Path, name: str, licence: str, models_dir: Path, source: str | None = None,
             replace: bool = False) -> Path:
    """Copy the export into ``models_dir`` as ``<name>.onnx``, write its manifest and load it as the
    agent does; the manifest's path."""
    from agent.detect import load_detector
    from tools.import_model import yolo_manifest_text

    training_file = model.with_suffix(".training.json")
    if source is None:
        if not training_file.is_file():
            raise SystemExit(f"{model}: no {training_file.name} beside it; say where it came from with --source")
        source = describe_training(json.loads(training_file.read_text()))
    target, manifest = models_dir / f"{name}.onnx", models_dir / f"{name}.toml"
    if not replace and (target.exists() or manifest.exists()):
        raise SystemExit(f"{target}: already registered; pick another --name or pass --replace")
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, target)
    manifest.write_text(yolo_manifest_text(target, name, source, licence, models_dir), encoding="utf-8")
    detector = load_detector(manifest)
    print(f"train_model: registered {manifest} (classes {', '.join(detector.class_names)}); use it with\n"
          f"  [models.{name}]\n  manifest = {json.dumps(str(manifest))}", file=sys.stderr)
    return manifest


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dataset", help="labelled folders + hard negatives -> YOLO data set (project venv)")
    d.add_argument("--labelled", type=Path, action="append", default=[], help="a labelling tool's YOLO export")
    d.add_argument("--hard-negatives", type=Path, action="append", default=[],
                   help="a box's <storage dir>/hard_negatives folder")
    d.add_argument("--classes", help="comma-separated class names, in id order (default: the folders')")
    d.add_argument("--rule", action="append", default=[], help="only hard negatives of this rule type")
    d.add_argument("--camera", action="append", default=[], help="only hard negatives of this camera")
    d.add_argument("--val-fraction", type=float, default=0.2)
    d.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="fine-tune with Ultralytics, offline (training venv)")
    t.add_argument("--data", type=Path, required=True, help="the data.yaml `dataset` wrote")
    t.add_argument("--model", default="yolo11n.yaml", help="architecture yaml or a local .pt to start from")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--hours", type=float, help="stop after this long, whatever --epochs says")
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--patience", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("export", help="checkpoint -> ONNX with class names in its metadata (training venv)")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--imgsz", type=int, help="default: the training size")
    e.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("register", help="into models/ with a manifest, loaded as the agent does (project venv)")
    r.add_argument("model", type=Path)
    r.add_argument("--name", required=True)
    r.add_argument("--licence", required=True, help="e.g. AGPL-3.0 (Ultralytics' licence covers trained weights)")
    r.add_argument("--source", help="default: from the export's training.json")
    r.add_argument("--models-dir", type=Path, default=REPO / "models")
    r.add_argument("--replace", action="store_true")
    return parser.parse_args(argv)


def run_offline(args: argparse.Namespace) -> None:
    tried = forbid_network()
    out = args.out if args.command == "train" else args.out.parent
    offline_ultralytics(out.resolve() / "ultralytics-config")
    if args.command == "train":
        train(args.data, args.out, args.model, args.epochs, args.imgsz, args.batch, args.patience, args.seed,
              args.hours)
    else:
        export(args.weights, args.out, args.imgsz)
    if tried:  # refused, but a library caught the error and went on
        raise SystemExit("train_model: network use was refused: " + "; ".join(tried))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "dataset":
            classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
            summary = build_dataset(args.labelled, args.hard_negatives, args.out, classes, set(args.rule),
                                    set(args.camera), args.val_fraction)
            print(json.dumps(summary["splits"], ensure_ascii=False), file=sys.stderr)
            if (share := background_share(summary)) > MAX_BACKGROUND_SHARE:
                print(f"train_model: note: {share:.0%} of the images have no boxes; Ultralytics advises "
                      f"at most {MAX_BACKGROUND_SHARE:.0%}: too many teach the model to see nothing",
                      file=sys.stderr)
        elif args.command == "register":
            register(args.model, args.name, args.licence, args.models_dir, args.source, args.replace)
        else:
            run_offline(args)
    except DatasetError as exc:
        print(f"train_model: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
