"""The bioimage.io package (export.py, unet_jax/export/bioimage.py): validates, round-trips, ONNX equals JAX."""

import json
import os
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
import pytest
import tifffile

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.export import bioimage
from unet_jax.inference import engines, onnx_export
from unet_jax.io import checkpoint, data
from unet_jax.network.model import build_model
from unet_jax.reports import evaluation, figures
from unet_jax.scores import metrics

from test_onnx_engine import spread_variables, textured  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 5


def make_workdir(path: str) -> tuple:
  """A workdir as train.py and evaluate.py leave it (tiny model): a best checkpoint of step STEP and
  a report of that step with one overlay picture; plus a uint8 EM-like slice. Returns (config, model, variables)."""
  config = unet2d.get_config("tiny")
  model = build_model(config.model)
  variables = spread_variables(model)
  saver = checkpoint.Checkpoints(path)
  saver.save(STEP, {**variables, "step": np.int32(STEP)}, val_dice=0.5)
  saver.close()
  os.makedirs(os.path.join(path, "report", "syn", "test"))
  figures.save_image(os.path.join(path, "report", "syn", "test", "overlay_z0000.png"), np.zeros((32, 64, 3), np.uint8))
  run = {"split": "test", "step": STEP, "pixel": {"dice": 0.9, "iou": 0.82, "precision": 0.88, "recall": 0.93},
         "threshold": {"value": 0.5}, "files": {"overlays": ["syn/test/overlay_z0000.png"]}}
  with open(os.path.join(path, "report", "report.json"), "w") as f:
    json.dump({"created": "2026-11-26", "runs": [run]}, f)
  tifffile.imwrite(os.path.join(path, "slice.tif"), np.round(255 * textured((48, 80), 7)).astype(np.uint8))
  return config, model, variables


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config, model, variables = make_workdir(workdir)
  package = os.path.join(workdir, "unet.zip")
  summary = bioimage.build_package(config, workdir, package, os.path.join(workdir, "slice.tif"))
  return config, model, variables, workdir, package, summary


@pytest.mark.slow
def test_package_validates_offline_and_onnx_equals_jax(exported):
  config, model, variables, _, package, summary = exported
  assert summary["step"] == STEP and summary["max_abs_onnx_minus_jax"] <= 1e-4
  assert bioimage.validate_package(package) == {"status": "passed", "failed_checks": []}
  with zipfile.ZipFile(package) as z:
    assert {"rdf.yaml", "weights.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= set(z.namelist())
    raw = np.load(z.open("test_input.npy"))
    expected = np.load(z.open("test_output.npy"))
    onnx_bytes = z.read("weights.onnx")
    readme = z.read("README.md").decode()
  assert raw.dtype == np.uint8 and raw.shape == (1, 32, 32, 1) and expected.shape == (1, 32, 32, 1)
  jax_output = np.asarray(engines.forward(model, "xla")(variables, raw.astype(np.float32) / 255))
  assert expected.std() > 0.01
  np.testing.assert_allclose(expected, jax_output, atol=1e-5)  # the package's expected output is the JAX model's
  ort = onnx_export.require("onnxruntime", "test")
  session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
  np.testing.assert_allclose(session.run(None, {onnx_export.INPUT_NAME: raw.astype(np.float32) / 255})[0],
                             jax_output, atol=1e-4)
  assert "## Validation" in readme and "0.9000" in readme and "synthetic" in readme


@pytest.mark.slow
def test_package_round_trips_through_bioimageio(exported):
  from bioimageio.core import predict  # pylint: disable=g-import-not-at-top
  from bioimageio.spec import load_model_description  # pylint: disable=g-import-not-at-top
  config, model, variables, _, package, summary = exported
  descr = load_model_description(package)
  axes = {a.id: a for a in descr.inputs[0].axes}
  assert (axes["y"].scale, axes["x"].scale, axes["y"].unit) == (config.data.voxel_size_nm[1],
                                                                 config.data.voxel_size_nm[2], "nanometer")
  assert [p.id for p in descr.inputs[0].preprocessing] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
  assert descr.weights.onnx.opset_version == onnx_export.OPSET
  assert f"test Dice {summary['package']['scores']['test']['dice']:.3f}" in descr.description  # its own output's
  other = np.round(255 * textured((32, 32), 11)).astype(np.uint8)  # a window the package has never seen
  sample = predict(model=descr, inputs={"raw": other[None, ..., None]})
  probabilities = sample.members["mitochondria"].data.values
  jax_output = np.asarray(engines.forward(model, "xla")(variables, other[None, ..., None].astype(np.float32) / 255))
  np.testing.assert_allclose(probabilities, jax_output, atol=1e-4)


@pytest.mark.slow
def test_bad_exports_are_one_line(exported, tmp_path):
  config, _, _, workdir, _, _ = exported
  image = os.path.join(workdir, "slice.tif")
  cases = [
      (dict(output=str(tmp_path / "unet.tar")), r"must be a \.zip"),
      (dict(report_path=str(tmp_path / "none.json")), r"no evaluation report .* run evaluate\.py"),
      (dict(image_path=str(tmp_path / "absent.tif")), r"no test image .* --input"),
  ]
  for kwargs, message in cases:
    arguments = {"output": str(tmp_path / "unet.zip"), "image_path": image, **kwargs}
    with pytest.raises(InputError, match=message) as e:
      bioimage.build_package(config, workdir, **arguments)
    assert "\n" not in str(e.value)
  stale = tmp_path / "stale.json"
  stale.write_text(json.dumps({"runs": [{"step": STEP + 1}]}))
  with pytest.raises(InputError, match=r"scores checkpoint step\(s\) \[6\], not the exported step 5"):
    bioimage.build_package(config, workdir, str(tmp_path / "unet.zip"), image, str(stale))
  big = config.copy_and_resolve_references()
  big.eval.window = 64  # larger than the 48 x 80 slice
  with pytest.raises(InputError, match=r"smaller than the export window"):
    bioimage.build_package(big, workdir, str(tmp_path / "unet.zip"), image)


@pytest.mark.slow
def test_export_cli_without_checkpoint_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--config=configs/unet2d.py:tiny",
                           f"--workdir={tmp_path}", f"--output={tmp_path / 'x.zip'}"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: no best checkpoint")


def _folder_data(root):
  return ml_collections.ConfigDict({"name": "folder", "root": str(root)})


def test_the_licence_is_read_from_beside_the_data_never_guessed(tmp_path, monkeypatch):
  data_dir = tmp_path / "em"
  data_dir.mkdir()
  with pytest.raises(InputError, match=r"cannot tell the training data's licence: no LICENSE or README in .* pass "
                     r"--license=SPDX-ID"):
    bioimage.data_license(_folder_data(data_dir))
  (data_dir / "README.md").write_text("# EM stacks\n\nLicence: CC BY-NC-SA 3.0 - non-commercial, share-alike.\n")
  assert bioimage.data_license(_folder_data(data_dir)) == ("CC-BY-NC-SA-3.0", str(data_dir / "README.md"))
  monkeypatch.chdir(tmp_path)  # the same folder however data.root spells it (the bug: a lookup by the literal string)
  assert bioimage.data_license(_folder_data("em"))[0] == bioimage.data_license(_folder_data("./em/"))[0] == \
      "CC-BY-NC-SA-3.0"
  (data_dir / "LICENSE").write_text("MIT License\n\nCopyright (c) 2024 Someone\n")
  assert bioimage.data_license(_folder_data(data_dir)) == ("MIT", str(data_dir / "LICENSE"))  # LICENSE first
  (data_dir / "LICENSE").write_text("Licensed under CC BY 4.0, parts under the MIT License\n")
  with pytest.raises(InputError, match=r"names several licences \(CC-BY-4.0, MIT\); pass --license"):
    bioimage.data_license(_folder_data(data_dir))
  assert bioimage.data_license(_folder_data(data_dir), "CC-BY-4.0") == ("CC-BY-4.0", "--license")
  with pytest.raises(InputError, match=r"--license='CC-BY-5.0' is not an SPDX licence id"):
    bioimage.data_license(_folder_data(data_dir), "CC-BY-5.0")
  generated = unet2d.get_config("tiny").data
  assert bioimage.data_license(generated)[0] == bioimage.GENERATED_DATA_LICENSE


@pytest.mark.parametrize("text,expected", [
    ("This work is licensed under a Creative Commons Attribution-NonCommercial 4.0 International License.",
     ["CC-BY-NC-4.0"]),
    ("Licensed under the Apache License, Version 2.0", ["Apache-2.0"]),
    ("SPDX-License-Identifier: BSD-3-Clause", ["BSD-3-Clause"]),
    ("Released into the public domain (CC0).", ["CC0-1.0"]),
    ("Copyright Intel Corporation; acquired with an FEI Helios", []),  # names, not licences
])
def test_licence_texts(text, expected):
  assert bioimage.licenses_in(text) == expected


def test_vnc_data_keeps_its_licence_whatever_the_root_string(vnc_root):
  for root in (vnc_root, os.path.abspath(vnc_root), os.path.abspath(vnc_root) + os.sep):
    license_id, source = bioimage.data_license(_folder_data(root))
    assert license_id == "CC-BY-NC-SA-3.0" and source.endswith("README.md")


def test_an_output_in_the_way_is_refused_before_any_work(tmp_path):
  important = tmp_path / "important.zip"
  important.write_bytes(b"an unrelated archive")
  with pytest.raises(InputError, match=r"--output .*important.zip' already exists; pass --overwrite to replace it"):
    bioimage.check_output(str(important), overwrite=False)
  bioimage.check_output(str(important), overwrite=True)
  assert important.read_bytes() == b"an unrelated archive"
  (tmp_path / "folder.zip").mkdir()
  with pytest.raises(InputError, match=r"--output .*folder.zip' is a folder, not a file; give the package's file name"):
    bioimage.check_output(str(tmp_path / "folder.zip"), overwrite=True)
  with pytest.raises(InputError, match=r"cannot be made: .*important.zip' is a file, not a folder"):
    bioimage.check_output(str(important / "model.zip"), overwrite=False)
  bioimage.check_output(str(tmp_path / "new" / "deeper" / "model.zip"), overwrite=False)  # folders made when writing
  assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_the_package_states_what_its_own_output_gives(tmp_path):
  """Exported after a report made with 8-transform TTA, calibration and a val-chosen threshold, the package
  states the threshold and scores of its own output (one pass, no calibration): bioimageio.core running the
  package on the val and test slices chooses that threshold and gets those scores; the report's are quoted apart."""
  from bioimageio.core import predict  # pylint: disable=g-import-not-at-top
  from bioimageio.spec import load_model_description  # pylint: disable=g-import-not-at-top
  config = unet2d.get_config("tiny")
  config.eval.window, config.eval.overlap = 64, 0.0  # one window per 64 x 64 slice: exactly the package's input
  config.eval.tta, config.eval.calibrate, config.eval.select_threshold = "dihedral", True, True
  config.eval.report_slices = 1
  workdir = str(tmp_path / "run")
  saver = checkpoint.Checkpoints(workdir)
  saver.save(STEP, {**spread_variables(build_model(config.model)), "step": np.int32(STEP)}, val_dice=0.5)
  saver.close()
  report = evaluation.evaluate(config, [workdir], os.path.join(workdir, "report"), ["val", "test"])
  splits = data.load_splits(config.data)
  raw = {name: np.round(splits[name].image * 255).astype(np.uint8) for name in ("val", "test")}  # as stored
  np.testing.assert_array_equal(raw["test"] / np.float32(255), splits["test"].image)
  tifffile.imwrite(tmp_path / "test.tif", raw["test"])
  package = str(tmp_path / "unet.zip")
  summary = bioimage.build_package(config, workdir, package, str(tmp_path / "test.tif"))
  descr = load_model_description(package)
  with zipfile.ZipFile(package) as z:
    readme = z.read("README.md").decode()

  run_package = lambda stack: np.stack([predict(model=descr, inputs={"raw": s[None, ..., None]}).members[
      "mitochondria"].data.values[0, ..., 0] for s in stack])
  val, test = run_package(raw["val"]), run_package(raw["test"])
  threshold = summary["package"]["threshold"]["value"]
  assert threshold == metrics.best_dice_threshold(val, splits["val"].mask, config.eval.threshold_candidates)[0]
  measured = metrics.pixel_scores(test >= threshold, splits["test"].mask)
  assert measured["dice"] == pytest.approx(summary["package"]["scores"]["test"]["dice"], abs=1e-4)
  assert f"| test | {measured['dice']:.4f} | {measured['iou']:.4f} | " in readme
  assert f"threshold it at {threshold:g} for a mask" in readme
  assert f"thresholded at {threshold:g}: " in descr.description
  assert f"test Dice {measured['dice']:.3f}" in descr.description
  assert descr.outputs[0].description.endswith(f"threshold at {threshold:g}")
  pipeline = next(r for r in report["runs"] if r["split"] == "test")
  assert abs(pipeline["pixel"]["dice"] - measured["dice"]) > 1e-3  # not the report's numbers, which are quoted apart:
  assert "mean of 8 flips/rotations per window, calibrated, which this package does not do" in readme
  assert f"| test | {pipeline['pixel']['dice']:.4f} | " in readme


@pytest.mark.slow
def test_a_k_class_package_has_one_output_channel_per_class_and_validates(tmp_path):
  """A 3-class model: named channels, ONNX equal to JAX, bioimageio.core's model test passes, the package's own
  per-class scores, and unet-jax reads it back as the same 3-class predictor."""
  from bioimageio.core import predict  # pylint: disable=g-import-not-at-top
  from bioimageio.spec import load_model_description  # pylint: disable=g-import-not-at-top
  from test_multiclass import class_config, write_labelled_folder  # pylint: disable=g-import-not-at-top
  from unet_jax.inference.predictor import Predictor  # pylint: disable=g-import-not-at-top
  from unet_jax.scores import classes  # pylint: disable=g-import-not-at-top
  write_labelled_folder(tmp_path)
  config = class_config(3)
  config.data.root, config.data.labels_root = str(tmp_path), str(tmp_path / "labels")
  config.data.class_names = ("background", "disc", "square")
  model = build_model(config.model)
  variables = spread_variables(model)
  workdir = str(tmp_path / "run")
  saver = checkpoint.Checkpoints(workdir)
  saver.save(STEP, {**variables, "step": np.int32(STEP)}, val_dice=0.5)
  saver.close()
  os.makedirs(os.path.join(workdir, "report"))
  run = {"split": "test", "step": STEP, "mean_dice": 0.8, "dice": [0.9, 0.8, 0.7]}
  with open(os.path.join(workdir, "report", "class_report.json"), "w") as f:
    json.dump({"created": "2026-11-26", "runs": [run]}, f)
  package = str(tmp_path / "classes.zip")
  summary = bioimage.build_package(config, workdir, package, str(tmp_path / "testing.tif"), license_id="CC-BY-4.0",
                                   validate=True)
  assert summary["bioimageio_test"] == {"status": "passed", "failed_checks": []}
  assert summary["num_classes"] == 3 and summary["max_abs_onnx_minus_jax"] <= 1e-4
  descr = load_model_description(package)
  [output] = descr.outputs
  assert str(output.id) == bioimage.CLASS_OUTPUT_ID
  assert [a for a in output.axes if a.type == "channel"][0].channel_names == ["background", "disc", "square"]
  with zipfile.ZipFile(package) as z:
    raw, expected = np.load(z.open("test_input.npy")), np.load(z.open("test_output.npy"))
    readme = z.read("README.md").decode()
    assert "cover.png" in z.namelist()
  assert expected.shape == (1, 32, 32, 3)
  np.testing.assert_allclose(expected.sum(-1), 1.0, atol=1e-5)  # softmax
  assert raw.dtype == np.float32  # the toy stack is stored as floats in [0, 1]: no scaling
  jax_output = np.asarray(engines.forward(model, "xla")(variables, raw))
  np.testing.assert_allclose(expected, jax_output, atol=1e-5)
  sample = predict(model=descr, inputs={"raw": raw})
  np.testing.assert_allclose(sample.members[bioimage.CLASS_OUTPUT_ID].data.values, jax_output, atol=1e-4)
  splits = data.load_splits(config.data, 3)
  plain = Predictor.create(model, variables, config.eval)
  dice = classes.class_scores(plain.label_map(plain.raw_probabilities(splits["test"].image)), splits["test"].mask,
                              3)["mean_dice"]
  assert summary["package"]["scores"]["test"]["mean_dice"] == pytest.approx(dice)
  assert f"| test | {dice:.4f} | " in readme and "| test | 0.8000 | 0.9000 | 0.8000 | 0.7000 |" in readme
  restored = Predictor.from_package(package)
  assert restored.num_classes == 3
  np.testing.assert_array_equal(restored.label_map(restored.raw_probabilities(splits["test"].image)),
                                plain.label_map(plain.raw_probabilities(splits["test"].image)))
