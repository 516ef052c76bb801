"""Choosing what to explain: objects from ids, pixels, boxes and cases; crops; one-line errors."""

import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.explain import explanation


def _slice():
  """A 40 x 50 slice: a found mitochondrion, a false positive and a missed one."""
  pred = np.zeros((40, 50), bool)
  truth = np.zeros((40, 50), bool)
  pred[2:10, 2:12] = truth[3:10, 2:12] = True  # found (IoU 0.875)
  pred[20:26, 30:40] = True  # false positive
  truth[30:38, 5:15] = True  # missed
  pred[0, 45] = True  # below min_size: dropped
  return explanation.slice_objects(pred, truth, min_size=4, iou=0.5)


def test_slice_objects_match_as_the_evaluation_does():
  objects = _slice()
  assert objects.pred_labels.max() == 2 and objects.pred_labels[0, 45] == 0
  assert objects.pred_status == {1: "true positive", 2: "false positive"}
  assert objects.missed == [2]


def test_ids_pixels_boxes_and_cases():
  objects = _slice()
  [found] = explanation.parse_objects("1", objects, crop=16)
  assert found.status == "true positive" and found.pixels.sum() == 80
  y0, x0, y1, x1 = found.box
  assert (y1 - y0, x1 - x0) == (16, 16) and y0 == 0 and x0 == 0  # clipped at the border
  [under] = explanation.parse_objects("22,33", objects, crop=16)
  assert under.name == "pred_2" and under.status == "false positive"
  [missed] = explanation.parse_objects("31,6", objects, crop=16)
  assert missed.name == "missed_2" and missed.status == "false negative"
  [box] = explanation.parse_objects("5,5,9,20", objects, crop=8)
  assert box.pixels.sum() == 4 * 15 and box.box == (3, 5, 11, 20)  # grown to cover the box
  cases = explanation.parse_objects("cases", objects, crop=16)
  assert [t.status for t in cases] == ["true positive", "false positive", "false negative"]
  assert [t.name for t in explanation.parse_objects("every; 2", objects, crop=16)] == ["pred_1", "pred_2", "pred_2"]
  [everything] = explanation.parse_objects("all", objects, crop=16)
  assert everything.box == (0, 0, 40, 50) and everything.pixels.sum() == 80 + 60


def test_crop_box_covers_large_objects_and_stays_inside():
  pixels = np.zeros((100, 60), bool)
  pixels[10:90, 50:55] = True
  assert explanation.crop_box(pixels, 32) == (10, 28, 90, 60)


@pytest.mark.parametrize("spec, expected", [
    ("7", "no predicted mitochondrion 7 in this slice; valid ids 1..2"),
    ("40,3", "pixel (40, 3) is outside the slice; valid y in 0..39, x in 0..49"),
    ("-1,3", "pixel (-1, 3) is outside the slice"),
    ("15,20", "pixel (15, 20) is background"),
    ("0,0,50,50", "box 0,0,50,50 is empty or outside the slice; valid 0 <= y0 < y1 <= 40, 0 <= x0 < x1 <= 50"),
    ("one", "cannot read object 'one'; use an id N, a pixel y,x, a box y0,x0,y1,x1"),
    ("1,2,3", "cannot read object '1,2,3'"),
])
def test_objects_not_in_the_image_are_one_line_errors_listing_what_is_valid(spec, expected):
  with pytest.raises(InputError) as e:
    explanation.parse_objects(spec, _slice(), crop=16)
  assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_cases_need_ground_truth():
  objects = explanation.slice_objects(np.eye(8, dtype=bool) | np.eye(8, k=1, dtype=bool), None, 0, 0.5)
  with pytest.raises(InputError, match="needs ground truth"):
    explanation.parse_objects("cases", objects, crop=8)
