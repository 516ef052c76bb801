"""One predictor for every tool: the report, --input (TIFF and OME-Zarr), explanations, ensembles and
export use the same checkpoint, temperature and threshold for one config, under the `vnc` variant's
decision policy (threshold chosen on val among its candidates, 8-transform TTA, best checkpoint)."""

import json
import logging
import os
import zipfile

import flax.serialization
import jax
import numpy as np
import pytest
import tifffile

from configs import unet2d
from test_inference import save_random_checkpoint
from unet_jax.errors import InputError
from unet_jax.explain import explanation
from unet_jax.export import bioimage
from unet_jax.inference import chunked, segment
from unet_jax.inference.predictor import (choose_min_size, decisions, fixed_threshold, is_package, PACKAGE_SETTINGS,
                                         PACKAGE_VARIABLES, Predictor, THRESHOLD_FILE)
from unet_jax.io import data, ngff, synthetic
from unet_jax.reports import evaluation
from unet_jax.scores import calibration, metrics


def vnc_policy(calibrate: bool):
  """The tiny model and synthetic data with the `vnc` variant's eval decisions (and calibration or not)."""
  config = unet2d.get_config("tiny")
  vnc = unet2d.get_config("vnc").eval
  for field in ("select_threshold", "threshold_candidates", "select_min_size", "min_size_candidates", "tta", "checkpoint",
                "threshold", "overlap", "blend"):
    config.eval[field] = vnc[field]
  config.eval.calibrate = calibrate
  config.eval.report_slices = 1
  return config


@pytest.fixture(params=[False, True], ids=["uncalibrated", "calibrated"])
def reported(request, tmp_path):
  """(config, workdir, the report's run on test) of a random checkpoint."""
  config = vnc_policy(request.param)
  workdir = str(tmp_path / "run")
  save_random_checkpoint(config, workdir, step=4)
  run = evaluation.evaluate(config, [workdir], str(tmp_path / "report"), ["test"])["runs"][0]
  return config, workdir, run


def applied_temperature(config, run) -> float:
  return run["calibration"]["temperature"] if config.eval.calibrate else 1.0


@pytest.mark.slow
def test_the_report_decides_on_val_and_stores_its_decisions(reported):
  config, workdir, run = reported
  val = data.load_splits(config.data)["val"]
  predictor = Predictor.restore(config, workdir)
  probs = calibration.apply_temperature(predictor.raw_probabilities(val.image), applied_temperature(config, run))
  chosen, _ = metrics.best_dice_threshold(probs, val.mask, config.eval.threshold_candidates)
  assert run["threshold"]["value"] == pytest.approx(chosen) and "val split" in run["threshold"]["source"]
  assert run["step"] == 4 and run["checkpoint"] == "best"
  with open(os.path.join(workdir, THRESHOLD_FILE)) as f:
    stored = json.load(f)["4"]
  assert stored["value"] == pytest.approx(chosen)
  size = choose_min_size(config.eval, probs >= chosen, val.mask)
  assert run["threshold"]["min_size"] == stored["min_size"] == size["min_size"]
  assert run["threshold"]["candidate_val_f1"] == pytest.approx(size["candidate_val_f1"])


@pytest.mark.slow
def test_load_reads_the_stored_decisions_without_the_val_split(reported, monkeypatch):
  config, workdir, run = reported
  monkeypatch.setattr(data, "load_splits", lambda *a: pytest.fail("the val split was read again"))
  predictor = Predictor.load(config, workdir)
  assert predictor.threshold_value == pytest.approx(run["threshold"]["value"])
  assert predictor.min_size == run["threshold"]["min_size"]
  assert predictor.temperature == pytest.approx(applied_temperature(config, run)) and predictor.step == run["step"]


@pytest.mark.slow
def test_other_settings_decide_again(reported):
  config, workdir, run = reported
  other = config.copy_and_resolve_references()
  other.eval.tta = "none"
  predictor = Predictor.load(other, workdir)  # not the stored record: chosen again on val with these settings
  val = data.load_splits(other.data)["val"]
  probs = predictor.calibrate(predictor.raw_probabilities(val.image))
  assert predictor.threshold_value == pytest.approx(
      metrics.best_dice_threshold(probs, val.mask, other.eval.threshold_candidates)[0])
  assert Predictor.load(config, workdir).threshold_value == pytest.approx(run["threshold"]["value"])
  fewer = config.copy_and_resolve_references()
  fewer.eval.min_size_candidates = (7,)  # another size policy: decided again, with it
  assert Predictor.load(fewer, workdir).min_size == 7
  fixed = config.copy_and_resolve_references()
  fixed.eval.select_min_size, fixed.eval.min_size = False, 3  # a fixed size is the config's
  assert Predictor.load(fixed, workdir).min_size == 3
  area = config.copy_and_resolve_references()
  area.eval.min_area += 1  # the size was chosen with the area: decided again
  assert Predictor.load(area, workdir).min_area == area.eval.min_area
  assert json.load(open(os.path.join(workdir, "threshold.json")))[str(run["step"])]["min_area"] == \
      area.eval.min_area


@pytest.mark.slow
def test_input_tiff_and_ome_zarr_use_the_report_decisions(reported, tmp_path):
  config, workdir, run = reported
  image, _ = synthetic.make_stack(7, 2, (48, 40))
  tifffile.imwrite(tmp_path / "stack.tif", image)
  ngff.write_image(str(tmp_path / "stack.ome.zarr"), image, (50.0, 4.6, 4.6))
  tiff = segment.segment_file(config, workdir, str(tmp_path / "stack.tif"), str(tmp_path / "tiff"), progress=False)
  zarr = chunked.segment_file(config, workdir, str(tmp_path / "stack.ome.zarr"), str(tmp_path / "zarr"),
                              progress=False)
  for summary in (tiff, zarr):
    assert summary["threshold"] == pytest.approx(run["threshold"]["value"]) and summary["step"] == run["step"]
    assert summary["temperature"] == pytest.approx(applied_temperature(config, run))
  probs = tifffile.imread(tiff["probabilities"]).astype(np.float32)
  np.testing.assert_array_equal(tifffile.imread(tiff["segmentation"]) > 0, probs >= run["threshold"]["value"])


@pytest.mark.slow
def test_explain_uses_the_report_decisions(reported, tmp_path):
  config, workdir, run = reported
  config = config.copy_and_resolve_references()
  config.explain.crop = 32
  doc = explanation.explain(config, workdir, str(tmp_path / "why"), "0,0,16,16", split="test",
                            rank_filters=False, sanity_checks=False)
  assert doc["threshold"] == pytest.approx(run["threshold"]["value"]) and doc["step"] == run["step"]
  assert doc["temperature"] == pytest.approx(applied_temperature(config, run))
  assert doc["threshold_source"] == run["threshold"]["source"] and doc["min_size"] == run["threshold"]["min_size"]


@pytest.mark.slow
def test_ensemble_threshold_follows_the_same_policy(reported, tmp_path):
  config, workdir, run = reported
  config = config.copy_and_resolve_references()
  config.eval.uncertainty = "tta"
  report = evaluation.evaluate(config, [workdir, workdir], str(tmp_path / "ensemble"), ["test"])
  (ensemble,) = report["ensembles"]
  # Two copies of one checkpoint: the ensemble's val map is the member's, so is its threshold.
  assert ensemble["threshold"]["value"] == pytest.approx(run["threshold"]["value"])
  assert "val split" in ensemble["threshold"]["source"]
  assert [r["threshold"]["value"] for r in report["runs"]] == pytest.approx([run["threshold"]["value"]] * 2)


@pytest.mark.slow
def test_export_carries_the_report_decisions(reported, tmp_path):
  config, workdir, run = reported
  image, _ = synthetic.make_stack(3, 1, (64, 64))
  tifffile.imwrite(tmp_path / "slice.tif", image[0])
  package = str(tmp_path / "unet.zip")
  summary = bioimage.build_package(config, workdir, package, str(tmp_path / "slice.tif"),
                                   str(tmp_path / "report" / "report.json"))
  assert summary["threshold"]["value"] == pytest.approx(run["threshold"]["value"]) and summary["step"] == run["step"]
  assert summary["temperature"] == pytest.approx(applied_temperature(config, run))
  carried = Predictor.from_package(package)
  loaded = Predictor.load(config, workdir)
  assert (carried.step, carried.threshold, carried.temperature) == (loaded.step, loaded.threshold, loaded.temperature)
  assert Predictor.load(config, package).threshold == loaded.threshold  # a package where a workdir goes
  stack = synthetic.make_stack(5, 2, (48, 48))[0] / np.float32(255)
  np.testing.assert_allclose(carried.probabilities(stack), loaded.probabilities(stack), atol=1e-6)


def test_a_raw_threshold_is_the_calibrated_one_on_raw_probabilities():
  p = np.linspace(0.01, 0.99, 99, dtype=np.float32)
  for temperature, threshold in ((1.7, 0.3), (0.6, 0.55), (1.0, 0.4)):
    predictor = Predictor(None, None, {}, temperature=temperature, threshold={"value": threshold, "source": "test"})
    np.testing.assert_array_equal(calibration.apply_temperature(p, temperature) >= threshold,
                                  p >= predictor.raw_threshold)


def test_a_package_without_a_predictor_is_one_line(tmp_path):
  with pytest.raises(InputError, match="cannot read the model package"):
    Predictor.from_package(str(tmp_path / "missing.zip"))
  (tmp_path / "unpacked").mkdir()
  (tmp_path / "unpacked" / PACKAGE_SETTINGS).write_text("{}")
  with pytest.raises(InputError, match=f"^{tmp_path / 'unpacked'} is a package without unet-jax's"):
    Predictor.from_package(str(tmp_path / "unpacked"))


def test_an_unpacked_package_is_loaded_as_its_zip(tmp_path):
  """A package's .zip and the folder it unpacks to carry one predictor; a workdir is neither."""
  config = unet2d.get_config("tiny")
  workdir = str(tmp_path / "run")
  save_random_checkpoint(config, workdir)
  predictor = Predictor.load(config, workdir)
  with zipfile.ZipFile(tmp_path / "unet.zip", "w") as package:  # the two files export.py adds to the package
    package.writestr(PACKAGE_SETTINGS, json.dumps(predictor.package_record(config)))
    package.writestr(PACKAGE_VARIABLES, flax.serialization.msgpack_serialize(predictor.variables))
    package.extractall(tmp_path / "unpacked")
  assert is_package(str(tmp_path / "unet.zip")) and is_package(str(tmp_path / "unpacked"))
  assert not is_package(workdir)
  zipped, unpacked = (Predictor.load(config, str(tmp_path / p)) for p in ("unet.zip", "unpacked"))
  assert (unpacked.step, unpacked.threshold, unpacked.settings) == (zipped.step, zipped.threshold, zipped.settings)
  assert jax.tree.all(jax.tree.map(np.array_equal, unpacked.variables, predictor.variables))


def test_restoring_says_nothing_about_read_only_managers(tmp_path, caplog):
  config = unet2d.get_config("tiny")
  save_random_checkpoint(config, str(tmp_path / "run"))
  with caplog.at_level(logging.INFO, logger="absl"):
    Predictor.load(config, str(tmp_path / "run"))
  assert not [r for r in caplog.records if "read only" in r.getMessage() or "read_only" in r.getMessage()]


def blobs_and_objects():
  """A val mask with three 10x10 objects and a prediction that finds them and adds eight 3x3 specks."""
  mask = np.zeros((2, 64, 64), np.uint8)
  for y, x in ((5, 5), (30, 30), (45, 10)):
    mask[0, y:y + 10, x:x + 10] = 1
  pred = mask.astype(bool).copy()
  for i in range(8):
    pred[1, 4 + 7 * i:7 + 7 * i, 50:53] = True
  return pred, mask


def test_min_size_is_chosen_on_val_by_instance_f1():
  """Specks of 9 px cost F1; the smallest candidate that drops them wins, and one that drops the objects loses."""
  pred, mask = blobs_and_objects()
  e = unet2d.get_config("tiny").eval
  e.select_min_size, e.min_size_candidates, e.min_area = True, (0, 10, 50, 100, 101), 0
  chosen = choose_min_size(e, pred, mask)
  assert chosen["min_size"] == 10 and "val split" in chosen["min_size_source"]
  f1 = dict(zip(chosen["min_size_candidates"], chosen["candidate_val_f1"]))
  assert f1[0] == pytest.approx(2 * 3 / (3 + 11)) and f1[10] == f1[50] == f1[100] == 1.0 and f1[101] == 0.0
  e.select_min_size = False
  assert choose_min_size(e, pred, mask) == {"min_size": e.min_size, "min_size_source": "config eval.min_size",
                                            "min_area": 0}
  e.select_min_size = True
  with pytest.raises(InputError, match="val split"):
    choose_min_size(e)


def test_the_size_is_chosen_with_the_min_area():
  """Profiles under eval.min_area are no 2D objects while the size is chosen, and the record carries the area."""
  pred, mask = blobs_and_objects()
  e = unet2d.get_config("tiny").eval
  e.select_min_size, e.min_size_candidates, e.min_area = True, (0, 10), 10
  chosen = choose_min_size(e, pred, mask)
  assert chosen["min_area"] == 10  # the 9 px specks are no 2D objects; in 3D they still are
  assert chosen["candidate_val_f1"] == pytest.approx([(1.0 + 2 * 3 / (3 + 11)) / 2, 1.0])


def test_decisions_choose_the_size_at_the_chosen_threshold():
  """The size is chosen on the prediction at the threshold chosen before it, and both are in one record."""
  pred, mask = blobs_and_objects()
  probs = np.where(mask, 0.9, np.where(pred, 0.4, 0.1)).astype(np.float32)  # specks only above 0.4
  e = unet2d.get_config("tiny").eval
  e.select_threshold, e.threshold_candidates = True, (0.3, 0.5)
  e.select_min_size, e.min_size_candidates = True, (0, 10)
  record = decisions(e, probs, mask)
  assert record["value"] == 0.5 and record["min_size"] == 0  # at 0.5 the specks are gone: nothing to drop
  e.threshold_candidates = (0.3,)
  assert decisions(e, probs, mask)["min_size"] == 10
  e.select_threshold, e.select_min_size = False, False
  assert decisions(e) == fixed_threshold(e)  # no val split needed
