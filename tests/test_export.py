"""The bioimage.io package (export.py, unet_jax/export/bioimage.py): validates, round-trips, ONNX equals JAX."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.export import bioimage
from unet_jax.inference import engines, onnx_export
from unet_jax.io import checkpoint
from unet_jax.network.model import build_model
from unet_jax.reports import figures

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
