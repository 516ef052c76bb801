"""Choosing what to explain: objects from ids, pixels, boxes and cases; crops; one-line errors; legible panels."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from unet_jax.errors import InputError
from unet_jax.explain import explain_report, explanation


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


def _panel_inputs(h, w, stages=("head", "dec0", "bottleneck")):
  """A crop f32[h, w] and an explanation result shaped as `explanation.explain_object` returns it."""
  rng = np.random.default_rng(0)
  crop = {"image": rng.uniform(size=(h, w)), "prob": rng.uniform(size=(h, w)), "truth": rng.uniform(size=(h, w)) > 0.5,
          "object": np.pad(np.ones((h // 2, w // 2), bool), ((h // 4, h - h // 4 - h // 2), (w // 4, w - w // 4 - w // 2)))}
  curve = list(np.linspace(2.0, -1.0, 21))
  result = {"maps": {"ig_black": rng.normal(size=(h, w)), "ig_blurred": rng.normal(size=(h, w)),
                     "cam_bottleneck": rng.uniform(size=(h, w))},
            "deletion": {"curves": {"attribution": curve, "random": curve[::-1]},
                         "auc": {"attribution": 0.1234, "random": 0.5678}},
            "randomisation_maps": {s: rng.normal(size=(h, w)) for s in stages},
            "randomisation": [{"stage": s, "spearman": 0.25} for s in stages]}
  return crop, result


def _overlap(a, b) -> bool:
  return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("shape", [(32, 32), (40, 24), (300, 260)])
def test_object_panel_is_legible(shape, tmp_path):
  h, w = shape
  crop, result = _panel_inputs(h, w)
  fig = explain_report.object_panel("object 3 (found, IoU 0.81)", crop, result)
  FigureCanvasAgg(fig).draw()
  renderer = fig.canvas.get_renderer()
  maps = [ax for ax in fig.axes if ax.images]
  assert len(maps) == 3 + 3 + 1 + 3  # input, probability, truth, three maps; trained and three random stages
  for ax in maps:  # each crop pixel on a whole number >= 1 of screen pixels, the same on both axes
    box = ax.get_window_extent(renderer)
    zoom = box.width / w
    assert zoom >= 1 and zoom == pytest.approx(round(zoom), abs=0.01) and box.height / h == pytest.approx(zoom, abs=0.01)
  texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
  assert {"deletion curve", "fraction removed", "object score", "random to head\nSpearman 0.25"} <= {
      t.get_text() for t in texts}
  assert min(t.get_fontsize() for t in texts) >= 9, sorted((t.get_fontsize(), t.get_text()) for t in texts)[:3]
  [legend] = fig.legends
  legend_box = legend.get_window_extent(renderer)
  assert [t.get_text() for t in legend.get_texts()] == ["attribution (AUC 0.123)", "random (AUC 0.568)"]
  assert not any(_overlap(legend_box, ax.get_window_extent(renderer)) for ax in fig.axes)  # maps and the plot
  titles = [t for t in texts if t not in legend.get_texts() and not any(t in ax.get_xticklabels() + ax.get_yticklabels()
                                                                        for ax in fig.axes)]
  boxes = [t.get_window_extent(renderer) for t in titles]
  assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
  explain_report.save_object_panel(str(tmp_path / "panel.png"), "object 3", crop, result)
  png = matplotlib.image.imread(tmp_path / "panel.png")
  assert png.shape[:2] == (round(fig.get_figheight() * fig.dpi), round(fig.get_figwidth() * fig.dpi))
  assert png.shape[0] >= 2 * h and png.shape[1] >= 7 * w  # two rows of maps; six maps and the plot in the first
