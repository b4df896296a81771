"""examples/detection.py: the Faster R-CNN + FastViT-FPN digit-scene run, end to end in small."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from conftest import assert_same_detections

pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "detection.py"


def _example():
    spec = importlib.util.spec_from_file_location("detection_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digit_scenes_boxes_cover_the_ink():
    example = _example()
    scenes = example.DigitScenes("val", 6, size=64, seed=3)
    again = example.DigitScenes("val", 6, size=64, seed=3)
    for i in range(len(scenes)):
        image, target = scenes[i]
        assert image.shape == (3, 64, 64) and image.min() >= 0 and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert 1 <= len(boxes) <= 4 and len(labels) == len(boxes)
        assert ((labels >= 1) & (labels <= 10)).all()  # digit + 1; 0 is the background
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        for x0, y0, x1, y1 in boxes.long().tolist():  # every box holds ink
            assert image[0, y0:y1, x0:x1].max() > 0.25
        same_image, same_target = again[i]  # deterministic per index
        assert torch.equal(image, same_image) and torch.equal(boxes, same_target["boxes"])


def test_detection_example_trains_evaluates_and_fuses():
    """Three steps on 64 px scenes: finite losses, a mAP@0.5 in [0, 1] from torchmetrics, and
    the reparameterized detector gives the same detections and the same mAP."""
    res = _example().main(
        [
            *("--steps", "3", "--batch-size", "2", "--size", "64"),
            *("--val-scenes", "4", "--threads", "1", "--log-every", "1"),
        ]
    )
    assert res["steps"] == 3 and len(res["losses"]) == 3
    assert all(math.isfinite(v) and v > 0 for v in res["losses"]), res["losses"]
    assert 0.0 <= res["map50"] <= 1.0
    assert res["map50_fused"] == pytest.approx(res["map50"], abs=1e-6)
    assert len(res["detections"]) == len(res["detections_fused"]) == 4
    for ref, out in zip(res["detections"], res["detections_fused"]):
        assert_same_detections(ref, out)
