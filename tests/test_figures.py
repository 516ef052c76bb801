"""Report pictures: overlay colours at known pixels, downscaling, PNG files, training-log parsing."""

import json

import matplotlib.image
import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.io import runlog
from unet_jax.reports import figures


def _case():
  image = np.full((2, 3), 0.4, np.float32)
  truth = np.array([[1, 1, 0], [0, 0, 0]], bool)
  pred = np.array([[1, 0, 1], [0, 0, 0]], bool)  # (0,0) TP, (0,1) FN, (0,2) FP, row 1 TN
  return image, pred, truth


def test_overlay_colours_at_known_pixels():
  image, pred, truth = _case()
  rgb = figures.overlay(image, pred, truth, alpha=1.0)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
  assert tuple(rgb[0, 0]) == figures.TP_RGB == (0, 255, 0)  # green
  assert tuple(rgb[0, 1]) == figures.FN_RGB == (0, 0, 255)  # blue
  assert tuple(rgb[0, 2]) == figures.FP_RGB == (255, 0, 0)  # red
  assert tuple(rgb[1, 0]) == (102, 102, 102)  # grey 0.4 * 255 untouched


def test_overlay_blends_over_grey():
  image, pred, truth = _case()
  rgb = figures.overlay(image, pred, truth, alpha=0.5)
  assert tuple(rgb[0, 2]) == (178, 51, 51)  # 0.5 * 102 + 0.5 * (255, 0, 0)
  assert tuple(rgb[1, 2]) == (102, 102, 102)
  with pytest.raises(InputError, match="one shape"):
    figures.overlay(image, pred[:1], truth)


def test_downscale_keeps_aspect_and_dtype():
  rgb = np.zeros((1000, 400, 3), np.uint8)
  rgb[:, :200] = 200
  small = figures.downscale(rgb, 500)
  assert small.shape == (500, 200, 3) and small.dtype == np.uint8
  assert small[10, 10, 0] == 200 and small[10, 190, 0] == 0
  assert figures.downscale(rgb, 2000) is rgb


def test_png_round_trip(tmp_path):
  image, pred, truth = _case()
  rgb = figures.overlay(image, pred, truth)
  path = str(tmp_path / "o.png")
  figures.save_image(path, rgb)
  back = np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)
  np.testing.assert_array_equal(back, rgb)


def test_montage_and_histogram_files(tmp_path):
  image, pred, truth = _case()
  panels = [figures.overlay(image, pred, truth)] * 3
  figures.save_montage(str(tmp_path / "m.png"), panels, ["a", "b", "c"], columns=2)
  figures.save_intensity_histogram(str(tmp_path / "h.png"), image, truth)
  montage = np.round(matplotlib.image.imread(str(tmp_path / "m.png"))[..., :3] * 255).astype(int)
  for colour in (figures.TP_RGB, figures.FN_RGB, figures.FP_RGB):  # the panels' error colours are drawn
    assert np.any(np.all(np.abs(montage - np.array(colour)) <= 60, axis=-1)), colour
  other = np.zeros_like(truth)
  figures.save_intensity_histogram(str(tmp_path / "h2.png"), image + np.float32(0.3) * truth, other)
  assert not np.array_equal(matplotlib.image.imread(str(tmp_path / "h.png")),
                            matplotlib.image.imread(str(tmp_path / "h2.png")))  # the picture follows the data
  with pytest.raises(InputError, match="panel"):
    figures.save_montage(str(tmp_path / "e.png"), [], [])


def test_read_log_and_training_curves(tmp_path):
  records = [{"event": "start", "step": 0, "minutes": 0.0}, {"step": 5, "loss": 0.9, "minutes": 0.1},
             {"step": 10, "loss": 0.7, "minutes": 0.2}, {"step": 10, "minutes": 0.25, "val_dice": 0.5},
             {"event": "start", "step": 5, "minutes": 0.25},  # resumed from step 5: step 10 logged again
             {"step": 10, "loss": 0.6, "minutes": 0.4}]
  log = tmp_path / "log.jsonl"
  log.write_text("\n".join(json.dumps(r) for r in records) + "\n{\"step\": 1")  # last line cut off
  train, val = runlog.read(str(log))
  assert [(r["step"], r["loss"]) for r in train] == [(5, 0.9), (10, 0.6)]
  assert [r["val_dice"] for r in val] == [0.5]
  figures.save_training_curves(str(tmp_path / "c.png"), str(log))
  records[-1]["loss"] = 0.1
  log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
  figures.save_training_curves(str(tmp_path / "c2.png"), str(log))
  assert not np.array_equal(matplotlib.image.imread(str(tmp_path / "c.png")),
                            matplotlib.image.imread(str(tmp_path / "c2.png")))  # the curve follows the log
  with pytest.raises(InputError, match="no training log"):
    runlog.read(str(tmp_path / "missing.jsonl"))


def test_reliability_diagram_and_uncertainty_panels(tmp_path):
  bins = {"mean_prob": [0.05, None, 0.9], "fraction": [0.1, None, 0.7], "count": [100, 0, 50]}
  figures.save_reliability_diagram(str(tmp_path / "r.png"), {"before": bins, "after": bins}, "val")
  assert matplotlib.image.imread(tmp_path / "r.png").shape[:2] == (600, 500)
  image, pred, truth = _case()
  figures.save_uncertainty_panels(str(tmp_path / "u.png"), figures.overlay(image, pred, truth),
                                  [("TTA", np.full((2, 3), 0.1, np.float32)), ("ensemble", np.zeros((2, 3)))], 64)
  assert matplotlib.image.imread(tmp_path / "u.png").shape[1] > matplotlib.image.imread(tmp_path / "u.png").shape[0]
