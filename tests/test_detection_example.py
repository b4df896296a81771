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

MIN_MAP50, MIN_MAP = 0.2, 0.08  # the 150-step run: 0.291 and 0.135 (AMD EPYC, one thread)
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
    """Three steps on 64 px scenes: finite losses, COCO mAPs in [0, 1] from torchmetrics, and
    the reparameterized detector gives the same detections and the same mAPs."""
    res = _example().main(
        [
            *("--steps", "3", "--batch-size", "2", "--size", "64"),
            *("--val-scenes", "4", "--threads", "1", "--log-every", "1"),
        ]
    )
    assert res["steps"] == 3 and len(res["losses"]) == 3
    assert all(math.isfinite(v) and v > 0 for v in res["losses"]), res["losses"]
    assert 0.0 <= res["map"] <= res["map50"] <= 1.0
    assert res["map50_fused"] == pytest.approx(res["map50"], abs=1e-6)
    assert res["map_fused"] == pytest.approx(res["map"], abs=1e-6)
    assert len(res["detections"]) == len(res["detections_fused"]) == 4
    for ref, out in zip(res["detections"], res["detections_fused"]):
        assert_same_detections(ref, out)
    diff = res["diff"]  # what the example prints: every detection found again, tiny diffs
    assert res["fused_same"] and diff["unmatched"] == 0 and diff["matched"] >= 4
    assert diff["max_box_diff"] <= 1e-3 and diff["max_score_diff"] <= 1e-4


def test_compare_detections_reports_the_largest_difference_and_misses():
    compare = _example().compare_detections
    ref = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 44.0], [5, 5, 9, 9]]),
        "scores": torch.tensor([0.9, 0.6, 0.1]),
        "labels": torch.tensor([3, 7, 2]),
    }
    near = {k: v.clone() for k, v in ref.items()}
    near["boxes"][1, 3] += 2e-4
    near["scores"][0] -= 5e-5
    got = compare([ref], [near])
    assert got["matched"] == 2 and got["unmatched"] == 0  # the lowest-scoring one is skipped
    assert got["max_box_diff"] == pytest.approx(2e-4, rel=1e-2)
    assert got["max_score_diff"] == pytest.approx(5e-5, rel=1e-2)
    moved = {k: v.clone() for k, v in ref.items()}
    moved["boxes"][0] += 0.5  # half a pixel off: not the same detection
    moved["labels"][1] = 8  # another class
    got = compare([ref], [moved])
    assert got["unmatched"] == 2 and got["unmatched_max_score"] == pytest.approx(0.9)


@pytest.mark.slow
def test_detection_example_learns_to_detect_digits():
    """A shortened run of the example (150 steps, 60 held-out scenes; 5 min on a busy CPU):
    the detector really learns (COCO mAPs well above chance) and the fused one scores the
    same."""
    res = _example().main(["--steps", "150", "--val-scenes", "60", "--log-every", "50"])
    assert res["map50"] >= MIN_MAP50 and res["map"] >= MIN_MAP
    assert res["map50_fused"] == pytest.approx(res["map50"], abs=1e-3)
    assert res["map_fused"] == pytest.approx(res["map"], abs=1e-3)
    assert res["fused_same"]
