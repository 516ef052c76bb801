"""Pixel metrics per slice and over thresholds, threshold selection (val only), and the full report."""

import json
import os
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.inference.predictor import choose_threshold, Predictor
from unet_jax.io import data, stacks
from unet_jax.reports import evaluation
from unet_jax.scores import calibration, metrics
from unet_jax.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mean_iou_and_slice_scores():
  truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0] * 8], bool)
  pred = np.array([[1, 1, 1, 0, 1, 0, 0, 0], [0] * 8], bool)  # slice 0: tp 3, fp 1, fn 1, tn 3
  s = metrics.pixel_scores(pred, truth)
  assert s["iou"] == pytest.approx(3 / 5)
  assert s["mean_iou"] == pytest.approx((3 / 5 + 11 / 13) / 2)  # background: tn 11 / (11 + 1 + 1)
  per_slice = metrics.slice_scores(pred, truth)
  assert [(p["tp"], p["fp"], p["fn"], p["tn"]) for p in per_slice] == [(3, 1, 1, 3), (0, 0, 0, 8)]
  assert per_slice[0]["dice"] == pytest.approx(6 / 8) and per_slice[1]["dice"] == 1.0
  assert per_slice[0]["mean_iou"] == pytest.approx((3 / 5 + 3 / 5) / 2)


def test_threshold_counts_equal_direct_counts():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(3, 16, 24)).astype(np.float32)
  probs[0, 0, :4] = 0.5  # exactly on a threshold: counts as positive
  truth = rng.uniform(size=probs.shape) < 0.3
  thresholds = [0.7, 0.1, 0.5, 0.3]
  counts = metrics.threshold_counts(probs, truth, thresholds)
  for t, row in zip(thresholds, counts):
    assert dict(zip(metrics.COUNTS, row.tolist())) == metrics.confusion_counts(probs >= t, truth)


def test_best_dice_threshold():
  truth = np.array([[1, 1, 0, 0]], bool)
  probs = np.array([[0.9, 0.6, 0.4, 0.1]], np.float32)
  best, dice = metrics.best_dice_threshold(probs, truth, [0.3, 0.5, 0.8])
  assert best == 0.5
  assert dice == pytest.approx([0.8, 1.0, 2 / 3])


def test_choose_threshold():
  config = unet2d.get_config("tiny").eval
  assert choose_threshold(config) == {"value": 0.5, "source": "config eval.threshold"}
  config.select_threshold = True
  config.threshold_candidates = (0.3, 0.5, 0.8)
  chosen = choose_threshold(config, np.array([[0.9, 0.6, 0.4, 0.1]]), np.array([[1, 1, 0, 0]]))
  assert chosen["value"] == 0.5 and chosen["val_dice"] == 1.0 and "val split" in chosen["source"]
  with pytest.raises(InputError, match="val split"):
    choose_threshold(config)


def test_stack_scores_by_hand():
  config = unet2d.get_config("tiny").eval
  config.min_size = 1000  # not read: the predictor's size (5 here) decides which components are objects
  mask = np.zeros((2, 8, 8), np.uint8)
  mask[0, 1:5, 1:5] = 1  # 16 px
  mask[1, 6:8, 6:8] = 1  # 4 px: below min_size, yet true instances are never filtered
  probs = np.zeros((2, 8, 8), np.float32)
  probs[0, 1:5, 1:5] = 0.9
  probs[1, 6:8, 0:2] = 0.8  # a 4 px false positive: dropped from instances, kept in pixel scores
  scores, tables = evaluation.stack_scores(probs, mask, 0.5, 5, config, (50.0, 4.6, 4.6))
  assert scores["pixel"]["tp"] == 16 and scores["pixel"]["fp"] == 4 and scores["pixel"]["fn"] == 4
  assert [s["dice"] for s in scores["slices"]] == [1.0, 0.0]
  at_05 = scores["instances"]["2d"][0]
  assert (at_05["n_true"], at_05["n_pred"], at_05["found"], at_05["missed"], at_05["spurious"]) == (2, 1, 1, 1, 0)
  assert at_05["ap"] == pytest.approx(51 / 101)  # recall stops at 1/2 with precision 1
  assert tables["true_2d"]["voxels"].tolist() == [16, 4] and tables["pred_3d"]["voxels"].tolist() == [16]
  assert scores["morphometry"]["true_3d"]["volume_nm3"]["count"] == 2


def test_min_area_keeps_an_objects_fragment_out_of_the_2d_objects_only():
  """A 16 px object's edge reaching 1 px into the next section: one object, in 2D as in 3D, with min_area."""
  config = unet2d.get_config("tiny").eval
  mask = np.zeros((2, 8, 8), np.uint8)
  mask[0, 1:5, 1:5] = 1
  probs = mask.astype(np.float32)
  probs[1, 2, 2] = 0.9  # the fragment: part of the 17-voxel volume component, above min_size
  counts = lambda s, d: (s["instances"][d][0]["n_pred"], s["instances"][d][0]["spurious"])
  without = evaluation.stack_scores(probs, mask, 0.5, 5, config, (50.0, 4.6, 4.6))[0]
  assert counts(without, "2d") == (2, 1) and counts(without, "3d") == (1, 0)
  scores, tables = evaluation.stack_scores(probs, mask, 0.5, 5, config, (50.0, 4.6, 4.6), min_area=2)
  assert counts(scores, "2d") == (1, 0) and counts(scores, "3d") == (1, 0)
  assert tables["pred_2d"]["voxels"].tolist() == [16] and tables["pred_3d"]["voxels"].tolist() == [17]


def test_run_names():
  assert evaluation.run_names(["runs/a", "other/a/", "b"]) == ["a_0", "a_1", "b"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained for a few steps: (config, workdir)."""
  config = unet2d.get_config("tiny")
  config.train.steps = 4
  config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 2
  workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.mark.slow
def test_report_end_to_end(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.select_threshold = True
  report_dir = str(tmp_path / "report")
  report = evaluation.evaluate(config, [workdir], report_dir, ["val", "test"], save_predictions=True)
  assert [(r["split"], r["step"]) for r in report["runs"]] == [("val", 4), ("test", 4)]
  with open(os.path.join(report_dir, "report.json")) as f:
    assert json.load(f)["runs"][1]["pixel"] == report["runs"][1]["pixel"]
  with open(os.path.join(report_dir, "report.md")) as f:
    md = f.read()
  links = re.findall(r"\]\(([^)]+)\)", md)
  assert any(l.endswith("worst_slices.png") for l in links) and any(l.endswith("training_curves.png") for l in links)
  for link in links:
    assert os.path.isfile(os.path.join(report_dir, link)), link
  test = report["runs"][1]
  assert test["threshold"]["value"] in config.eval.threshold_candidates
  assert "val split" in test["threshold"]["source"] and "optimistic" in md  # the val row is flagged
  saved = stacks.read_stack(os.path.join(report_dir, test["files"]["prediction_tif"])) > 0
  truth = data.load_splits(config.data)["test"].mask
  expected = {**metrics.confusion_counts(saved, truth), **metrics.pixel_scores(saved, truth)}
  assert {k: test["pixel"][k] for k in expected} == pytest.approx(expected)  # scores of the saved prediction
  by_hand = [(int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))) for p, t in zip(saved, truth > 0)]
  assert [(s["tp"], s["fp"], s["fn"]) for s in test["slices"]] == by_hand  # each slice's counts, in order
  assert [r["iou_threshold"] for r in test["instances"]["3d"]] == [0.5, 0.75]
  files = test["files"]
  for key in ("slices_csv", "mitochondria_true_2d_csv", "mitochondria_pred_3d_csv", "intensity_histogram",
              "worst_slices", "prediction_tif"):
    assert os.path.isfile(os.path.join(report_dir, files[key])), key
  assert stacks.read_stack(os.path.join(report_dir, files["prediction_tif"])).shape == (2, 64, 64)
  overlay = matplotlib.image.imread(os.path.join(report_dir, files["overlays"][0]))
  assert overlay.shape[:2] == (64, 64)  # below figure_px: full size
  assert len(files["overlays"]) == 2 and files["worst_slice_indices"] == sorted(
      range(2), key=lambda i: test["slices"][i]["dice"])


@pytest.mark.slow
def test_threshold_selection_never_uses_test_split(trained, tmp_path, monkeypatch):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.select_threshold = True
  real = data.load_splits(config.data)
  predicted, selected_on = [], []
  raw_probabilities, best_dice_threshold = Predictor.raw_probabilities, metrics.best_dice_threshold

  def spy_predict(self, image):
    probs = raw_probabilities(self, image)
    predicted.append((image, probs))
    return probs

  def spy_select(probs, truth, thresholds):
    selected_on.append((probs, truth))
    return best_dice_threshold(probs, truth, thresholds)

  monkeypatch.setattr(Predictor, "raw_probabilities", spy_predict)
  monkeypatch.setattr(metrics, "best_dice_threshold", spy_select)
  chosen = evaluation.evaluate(config, [workdir], str(tmp_path / "a"), ["test"])["runs"][0]["threshold"]
  assert len(selected_on) == 1
  probs, truth = selected_on[0]
  assert np.array_equal(truth, real["val"].mask)
  val_probs = [p for image, p in predicted if image is not None and np.array_equal(image, real["val"].image)]
  assert len(val_probs) == 1 and probs is val_probs[0]

  # Changing the test split (image and labels) cannot change the threshold.
  rng = np.random.default_rng(0)
  scrambled = data.Split(rng.uniform(size=real["test"].image.shape).astype(np.float32), 1 - real["test"].mask)
  monkeypatch.setattr(data, "load_splits", lambda _: {**real, "test": scrambled})
  again = evaluation.evaluate(config, [workdir], str(tmp_path / "b"), ["test"])["runs"][0]["threshold"]
  assert again == chosen


def test_bad_split_name_and_missing_checkpoint(tiny_config, tmp_path):
  with pytest.raises(InputError, match="splits must be"):
    evaluation.evaluate(tiny_config, ["w"], str(tmp_path), ["testing"])
  with pytest.raises(InputError, match="no best checkpoint"):
    evaluation.evaluate(tiny_config, [str(tmp_path / "none")], str(tmp_path))


@pytest.mark.slow
def test_cli_two_checkpoints(trained, tmp_path):
  _, workdir = trained
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={workdir},{workdir}",
       "--split=test", f"--report_dir={tmp_path}", "--config.eval.report_slices=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert re.search(r"tiny_0 test \(step 4, threshold 0.5, 95 % intervals over 2 slices\): "
                   r"dice 0\.\d{4} \[0\.\d{4}, [01]\.\d{4}\]", result.stdout), result.stdout
  with open(tmp_path / "report.json") as f:
    report = json.load(f)
  assert [r["run"] for r in report["runs"]] == ["tiny_0", "tiny_1"]
  assert report["runs"][0]["pixel"] == report["runs"][1]["pixel"]
  assert report["command"].startswith("python evaluate.py") and len(report["runs"][0]["files"]["overlays"]) == 1


def test_stack_scores_intervals_and_confidence_by_hand():
  config = unet2d.get_config("tiny").eval
  config.min_size = 0
  mask = np.zeros((2, 16, 16), np.uint8)
  mask[:, 2:6, 2:6] = 1
  probs = np.zeros((2, 16, 16), np.float32)
  probs[:, 2:6, 2:6] = 0.9  # found in both slices
  probs[0, 10:13, 10:13] = 0.6  # spurious, less confident
  unc = np.where(probs > 0.7, 0.02, 0.3).astype(np.float32)
  scores, tables = evaluation.stack_scores(probs, mask, 0.5, config.min_size, config, (50.0, 4.6, 4.6), unc)
  dice = scores["pixel_intervals"]["dice"]
  assert dice["estimate"] == pytest.approx(scores["pixel"]["dice"]) and dice["n"] == 2  # two slices
  assert dice["low"] == pytest.approx(32 / 41) and dice["high"] == 1.0  # resamples: slice 0 twice ... slice 1 twice
  row = scores["instances"]["2d"][0]
  assert row["intervals"]["precision"]["estimate"] == pytest.approx(2 / 3) and row["intervals"]["precision"]["n"] == 3
  assert row["intervals"]["f1"]["n"] == 3  # two matched pairs, one spurious
  pred_2d = tables["pred_2d"]
  assert pred_2d["matched"].tolist() == [1, 0, 1] and pred_2d["mean_uncertainty"] == pytest.approx([0.02, 0.3, 0.02])
  review = scores["review"]["2d"]
  assert review["caught"] == 1 and review["n_wrong"] == 1 and review["list"][0]["matched"] == 0
  assert review["auroc"]["confidence"]["estimate"] == 1.0 and review["auroc"]["mean_prob"]["estimate"] == 1.0


@pytest.mark.slow
def test_report_intervals_calibration_uncertainty_review(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.calibrate = True
  config.eval.uncertainty = "tta"
  report_dir = str(tmp_path / "report")
  report = evaluation.evaluate(config, [workdir, workdir], report_dir, ["val", "test"])
  val, test = report["runs"][:2]
  stored = calibration.stored_record(workdir, test["step"])["temperature"]
  assert test["calibration"]["temperature"] == stored and test["calibration"]["applied"]
  assert val["calibration"]["in_sample"] and not test["calibration"]["in_sample"]
  assert val["calibration"]["log_loss_after"] <= val["calibration"]["log_loss_before"] + 1e-9  # fitted on val
  for r in (val, test):
    assert r["pixel_intervals"]["dice"]["n"] == r["shape"][0] and r["pixel_intervals"]["dice"]["resamples"] == 1000
    u, wrong = r["uncertainty"], (r["pixel"]["fp"] + r["pixel"]["fn"]) / np.prod(r["shape"])
    assert u["source"] == "tta" and u["mean"] > 0  # the 8 transforms of a 4-step model disagree
    assert 0 < wrong < 1 and u["mean"] == pytest.approx(  # the mean splits into errors and correct pixels
        wrong * u["mean_on_errors"] + (1 - wrong) * u["mean_on_correct"], rel=1e-4)
    assert set(r["review"]) == {"2d", "3d"} and len(r["review"]["2d"]["list"]) == r["review"]["2d"]["top_k"]
    for key in ("reliability_diagram", "review_2d_csv", "mitochondria_pred_3d_csv"):
      assert os.path.isfile(os.path.join(report_dir, r["files"][key])), key
    assert len(r["files"]["uncertainty_maps"]) == len(r["files"]["overlays"])
  with open(os.path.join(report_dir, r["files"]["mitochondria_pred_2d_csv"])) as f:
    header = f.readline().strip().split(",")
  assert {"mean_prob", "mean_uncertainty", "boundary_sharpness", "confidence", "matched"} <= set(header)
  ensemble = report["ensembles"]
  assert [e["split"] for e in ensemble] == ["val", "test"] and ensemble[1]["uncertainty"]["mean"] == 0.0  # same model
  with open(os.path.join(report_dir, "report.md")) as f:
    md = f.read()
  for text in ("## Calibration of the probability map", "## Per-mitochondrion confidence and review list",
               "## Uncertainty maps", "would catch", "\u2020"):
    assert text in md, text
  assert re.search(r"\| \d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\]\u2020 \|", md)  # Dice [interval] on 2 slices: flagged
  for link in re.findall(r"\]\(([^)]+)\)", md):
    assert os.path.isfile(os.path.join(report_dir, link)), link


@pytest.mark.slow
def test_temperature_never_sees_the_test_split(trained, tmp_path, monkeypatch):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  real = data.load_splits(config.data)
  fitted_on = []
  fit = calibration.fit_temperature
  monkeypatch.setattr(calibration, "fit_temperature", lambda p, t: fitted_on.append(t) or fit(p, t))
  first = evaluation.evaluate(config, [workdir], str(tmp_path / "a"), ["test"])["runs"][0]["calibration"]
  assert len(fitted_on) == 1 and np.array_equal(fitted_on[0], real["val"].mask)
  rng = np.random.default_rng(0)
  scrambled = data.Split(rng.uniform(size=real["test"].image.shape).astype(np.float32), 1 - real["test"].mask)
  monkeypatch.setattr(data, "load_splits", lambda _: {**real, "test": scrambled})
  again = evaluation.evaluate(config, [workdir], str(tmp_path / "b"), ["test"])["runs"][0]["calibration"]
  assert again["temperature"] == first["temperature"] and again["ece_before"] != first["ece_before"]
