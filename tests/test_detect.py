"""Detector decoding: NanoDet (GFL) and Ultralytics YOLO exports, on graphs with known outputs."""

from __future__ import annotations

import numpy as np
import pytest

from agent.cli import main
from agent.detect import choose_providers, load_detector, nanodet
from agent.detect.manifest import cpu_flags, int8_risk, load_manifest
from agent.typedtoml import ConfigError
from tests.helpers import NANODET_MANIFEST, REPO, write_camera, write_edge
from tests.onnx_fixtures import make_yolo_like_onnx
from tools.import_model import yolo_manifest_text

YOLO_UNTRAINED = REPO / "tests" / "data" / "yolov8n-untrained-320.onnx"


def import_yolo(model, tmp_path):
    manifest = tmp_path / "model.toml"
    manifest.write_text(yolo_manifest_text(model, "test-yolo", "test fixture", "AGPL-3.0", tmp_path))
    return manifest


def test_yolo_decoding_maps_letterboxed_boxes_back_and_applies_per_class_nms(tmp_path):
    # Input 320x320; the frame is 640x480, so letterbox scale 0.5 and 40 px of padding top and bottom.
    columns = [
        # cx, cy, w, h (input px), score person, score bicycle
        (160, 160, 100, 60, 0.90, 0.00),  # person -> frame (220, 180, 420, 300)
        (162, 161, 100, 60, 0.80, 0.00),  # near-duplicate person: suppressed by NMS
        (160, 160, 100, 60, 0.00, 0.70),  # same place, other class: kept (per-class NMS)
        (40, 100, 20, 20, 0.10, 0.05),  # below min_score: dropped
    ]
    output = np.array(columns, np.float32).T[None]  # (1, 6, 4)
    model = make_yolo_like_onnx(tmp_path / "const.onnx", output, {0: "person", 1: "bicycle"})
    detector = load_detector(import_yolo(model, tmp_path), threads=1, min_score=0.3, nms_iou=0.5)
    assert detector.class_names == ("person", "bicycle")

    found = detector.detect(np.zeros((480, 640, 3), np.uint8))

    order = np.argsort(-found.score)
    assert found.names() and [found.names()[i] for i in order] == ["person", "bicycle"]
    np.testing.assert_allclose(found.xyxy[order], [[220, 180, 420, 300], [220, 180, 420, 300]], atol=0.01)
    np.testing.assert_allclose(found.score[order], [0.9, 0.7], atol=1e-6)


def test_yolo_decoder_reads_a_real_ultralytics_export(tmp_path):
    """An untrained yolov8n export (tools/export_yolo_fixture.sh): shapes, names and metadata."""
    manifest = load_manifest(import_yolo(YOLO_UNTRAINED, tmp_path))
    assert manifest.input_size == (320, 320) and manifest.input_name == "images"
    # tools/export_yolo_fixture.sh writes COCO's names into the untrained model, as a pretrained one has.
    assert len(manifest.classes) == 80 and manifest.classes[:2] == ["person", "bicycle"]
    detector = load_detector(import_yolo(YOLO_UNTRAINED, tmp_path), threads=1, min_score=0.0)
    out = detector.session.get_outputs()[0]
    assert out.shape == [1, 84, 2100]
    found = detector.detect(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    assert found.xyxy.shape[1] == 4 and len(found) > 0  # untrained: any boxes, but well-formed
    assert (found.xyxy[:, [0, 2]] <= 640).all() and (found.xyxy[:, [1, 3]] <= 480).all()
    assert (found.class_id < 80).all()


def test_yolo_output_of_wrong_shape_is_a_clear_error(tmp_path):
    output = np.zeros((1, 7, 4), np.float32)  # 4 + 3 rows but only two names
    model = make_yolo_like_onnx(tmp_path / "bad.onnx", output, {0: "person", 1: "bicycle"})
    detector = load_detector(import_yolo(model, tmp_path), threads=1)
    with pytest.raises(ValueError, match=r"expected output of shape \(1, 6, N\), got \(1, 7, 4\)"):
        detector.detect(np.zeros((320, 320, 3), np.uint8))


def test_nanodet_gfl_decoding_of_one_known_anchor():
    manifest = load_manifest(NANODET_MANIFEST)
    spec = manifest.nanodet
    outputs = {}
    for head in spec.heads:
        cells = (416 // head.stride) ** 2
        outputs[head.scores] = np.zeros((1, cells, 80), np.float32)
        outputs[head.boxes] = np.zeros((1, cells, 44), np.float32)
    stride8 = spec.heads[0]
    assert stride8.stride == 8
    cell = 5 * 52 + 10  # row 5, column 10
    outputs[stride8.scores][0, cell, 1] = 0.8  # bicycle
    logits = np.full((4, 11), -20.0, np.float32)
    logits[:, 3] = 20.0  # every side: distance 3 bins = 24 px
    outputs[stride8.boxes][0, cell] = logits.reshape(-1)

    xyxy, score, class_id = nanodet.decode(outputs, manifest, min_score=0.3)

    cx, cy = (10 + spec.centre_offset) * 8, (5 + spec.centre_offset) * 8
    np.testing.assert_allclose(xyxy, [[cx - 24, cy - 24, cx + 24, cy + 24]], atol=1e-3)
    assert score.tolist() == pytest.approx([0.8]) and class_id.tolist() == [1]


def test_an_int8_model_on_an_x86_cpu_without_vnni_is_flagged_and_nothing_else_is():
    int8 = load_manifest(NANODET_MANIFEST.with_name("nanodet-g-416-int8.toml"))
    fp32 = load_manifest(NANODET_MANIFEST)
    avx2_only, vnni = {"sse4_2", "avx2"}, {"avx2", "avx512_vnni"}
    risk = int8_risk(int8, "x86_64", avx2_only)
    assert risk and "nanodet-g-416-int8" in risk and "VNNI" in risk
    assert int8_risk(int8, "x86_64", vnni) is None
    assert int8_risk(int8, "x86_64", {"avx_vnni"}) is None
    assert int8_risk(fp32, "x86_64", avx2_only) is None
    assert int8_risk(int8, "aarch64", set()) is None  # the x86 kernels' trouble only


def test_cpu_flags_are_read_from_the_flags_lines(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == set()


# --- execution providers (issue 10): a model setting, CPU the fallback ------------------------

def test_choose_providers_keeps_the_order_asked_and_ends_with_the_cpu():
    known = ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["OpenVINOExecutionProvider", "CUDAExecutionProvider"],
                            ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"], known) == (
        ["OpenVINOExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], [])
    assert choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"], known) == (
        ["CPUExecutionProvider"], ["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="unknown execution provider 'CudaProvider'"):
        choose_providers(["CudaProvider"], ["CPUExecutionProvider"], known)


def test_a_provider_this_build_lacks_falls_back_to_the_cpu_and_check_says_so(tmp_path, capsys):
    detector = load_detector(NANODET_MANIFEST, threads=1, providers=["CUDAExecutionProvider"])
    assert detector.providers == ["CPUExecutionProvider"]
    assert detector.missing_providers == ["CUDAExecutionProvider"]
    assert len(detector.detect(np.zeros((576, 768, 3), np.uint8))) == 0  # it runs
    edge = write_edge(tmp_path, [write_camera(tmp_path, "cam1", "/nonexistent/clip.mp4")])
    edge.write_text(edge.read_text().replace("threads = 2", 'threads = 2\nproviders = ["CUDAExecutionProvider"]'))
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "runs on CPUExecutionProvider" in out
    assert "warning: CUDAExecutionProvider not in this onnxruntime build; running on CPUExecutionProvider" in out


def test_an_unknown_provider_name_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"providers: unknown execution provider 'CUDA'"):
        load_detector(NANODET_MANIFEST, threads=1, providers=["CUDA"])
