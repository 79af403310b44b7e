"""Object detection with onnxruntime on the CPU.

One :class:`Detector` per model on the box, shared by every camera that uses it: the lock keeps
two cameras from running the model at once and oversubscribing a small box's cores (onnxruntime
releases the GIL while it runs, so the other cameras keep decoding meanwhile).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.detect import nanodet, yolo
from agent.detect.manifest import Decoder, ModelManifest, Resize, load_manifest, verify_model_file
from agent.typedtoml import ConfigError
from agent.types import Detections

# cv2 and onnxruntime are imported inside the functions that use them: agent.config reads model
# manifests (agent.detect.manifest, which runs this package's __init__) and must not load them.


@dataclass(frozen=True)
class Letterbox:
    """How a frame was mapped onto the input tensor: input = frame * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, xyxy: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
        out = xyxy.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, frame_w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, frame_h)
        return out


CPU = "CPUExecutionProvider"


def choose_providers(wanted: list[str], available: list[str], known: list[str]) -> tuple[list[str], list[str]]:
    """(the providers to ask onnxruntime for, the wanted ones this build lacks). A name onnxruntime
    does not know at all is a typo, not a missing build: ValueError. The CPU always comes last, so
    a box whose accelerator library is missing still runs, slower, and says so."""
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise ValueError(f"unknown execution provider {unknown[0]!r} (onnxruntime knows: {', '.join(known)})")
    chosen = [p for p in wanted if p in available and p != CPU]
    return chosen + [CPU], [p for p in wanted if p not in available]


class Detector:
    def __init__(self, manifest: ModelManifest, manifest_path: Path, threads: int = 2,
                 min_score: float = 0.3, nms_iou: float = 0.5, providers: list[str] | None = None):
        import onnxruntime as ort

        verify_model_file(manifest, manifest_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            chosen, self.missing_providers = choose_providers(
                providers or [CPU], ort.get_available_providers(), ort.get_all_providers())
        except ValueError as exc:
            raise ConfigError(manifest_path, "providers", str(exc)) from None
        try:
            self.session = ort.InferenceSession(str(manifest.file), options, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidProtobuf types
            raise ConfigError(manifest.file, "", f"onnxruntime cannot load the model: {exc}") from None
        self.manifest = manifest
        self.sha256 = manifest.sha256.lower()
        self.min_score, self.nms_iou = min_score, nms_iou
        self._lock = threading.Lock()
        inputs = {i.name: i for i in self.session.get_inputs()}
        if manifest.input_name not in inputs:
            raise ConfigError(manifest_path, "input_name",
                              f"model has no input {manifest.input_name!r} (inputs: {', '.join(inputs)})")
        classes = list(manifest.classes)
        if manifest.decoder is Decoder.YOLO:
            self.output_name = manifest.output or self.session.get_outputs()[0].name
            classes = classes or yolo.class_names_from_metadata(
                self.session.get_modelmeta().custom_metadata_map)
        if not classes:
            raise ConfigError(manifest_path, "classes", "no class names in the manifest or the model metadata")
        self.class_names = tuple(classes)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def providers(self) -> list[str]:
        """What the session really runs on, best first (onnxruntime may drop one it cannot start)."""
        return self.session.get_providers()

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        import cv2

        m = self.manifest
        in_w, in_h = m.input_size
        h, w = image.shape[:2]
        resized: np.ndarray  # OpenCV's results, or the letterbox canvas
        if m.resize is Resize.LETTERBOX:
            scale = min(in_w / w, in_h / h)
            new_w, new_h = round(w * scale), round(h * scale)
            pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
            canvas = np.full((in_h, in_w, 3), 114, np.uint8)
            canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(
                image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            resized, box = canvas, Letterbox(scale, scale, pad_x, pad_y)
        else:
            resized = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
            box = Letterbox(in_w / w, in_h / h, 0.0, 0.0)
        if m.channel_order == "RGB":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        tensor = (resized.astype(np.float32) - np.asarray(m.mean, np.float32)) / np.asarray(m.std, np.float32)
        if m.input_layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor[None]), box

    def detect(self, image: np.ndarray) -> Detections:
        tensor, box = self.preprocess(image)
        with self._lock:
            raw = self.session.run(None, {self.manifest.input_name: tensor})
        outputs = {o.name: v for o, v in zip(self.session.get_outputs(), raw)}
        if self.manifest.decoder is Decoder.NANODET:
            xyxy, score, class_id = nanodet.decode(outputs, self.manifest, self.min_score)
        else:
            xyxy, score, class_id = yolo.decode(outputs[self.output_name], len(self.class_names), self.min_score)
        keep = nms(xyxy, score, class_id, self.min_score, self.nms_iou)
        h, w = image.shape[:2]
        return Detections(box.to_frame(xyxy[keep], w, h), score[keep], class_id[keep], self.class_names)


def nms(xyxy: np.ndarray, score: np.ndarray, class_id: np.ndarray, min_score: float, iou: float) -> np.ndarray:
    """Indices kept by per-class non-maximum suppression (OpenCV's), best first."""
    import cv2

    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), class_id.tolist(), min_score, iou)
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def load_detector(manifest_path: Path, threads: int = 2, min_score: float = 0.3, nms_iou: float = 0.5,
                  providers: list[str] | None = None) -> Detector:
    manifest = load_manifest(manifest_path)
    return Detector(manifest, manifest_path, threads, min_score, nms_iou, providers)
