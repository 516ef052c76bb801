"""The ONNX Runtime inference engine (`eval.engine='onnx'`) against XLA: same windows, same probabilities."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.inference import engines, onnx_export, windows
from unet_jax.io import checkpoint
from unet_jax.network.model import abstract_variables, UNet


def spread_variables(model: UNet, seed: int = 0) -> dict:
  """Seeded random variables whose probabilities spread over (0, 1): He-scaled kernels, a large head,
  non-trivial batch statistics (so a wrong BatchNorm, resize or layout in the export shows)."""
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if "kernel" in name:
      gain = 20.0 if "head" in name else 2.0
      return (rng.standard_normal(leaf.shape) * np.sqrt(gain / np.prod(leaf.shape[:-1]))).astype(np.float32)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model))


def textured(shape: tuple[int, int], seed: int) -> np.ndarray:
  """f32[H, W] in [0, 1]: a smooth pattern plus noise, so the network's outputs vary across the image."""
  y, x = np.mgrid[:shape[0], :shape[1]]
  noise = np.random.default_rng(seed).random(shape)
  return (0.5 + 0.3 * np.sin(x / 4) * np.cos(y / 6) + 0.2 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
  model = UNet(depth=2, base_features=4)
  return model, spread_variables(model)


@pytest.mark.slow
def test_engines_agree_on_random_weights_through_the_sliding_window(tiny):
  model, variables = tiny
  image = textured((45, 70), 1)  # windows overlap; the last batch is padded
  for tta in ("none", "flips"):
    run = {engine: np.asarray(windows.sliding_window_predict(windows.predictor(model, tta, engine), variables,
                                                               image, (32, 32), 0.5, "gaussian", 3))
           for engine in engines.ENGINES}
    assert run["xla"].std() > 0.05, "probabilities too flat for the comparison to mean anything"
    np.testing.assert_allclose(run["onnx"], run["xla"], atol=1e-4)


@pytest.mark.slow
def test_engine_follows_new_weights_and_odd_windows(tiny):
  model, variables = tiny
  images = np.stack([textured((20, 28), 2), textured((20, 28), 3)])[..., None]
  predict = {engine: jax.jit(windows.predictor(model, "none", engine)) for engine in engines.ENGINES}
  for seed in (3, 4):  # the same compiled function with other weights: a new session, not stale results
    other = spread_variables(model, seed)
    np.testing.assert_allclose(np.asarray(predict["onnx"](other, images)), np.asarray(predict["xla"](other, images)),
                               atol=1e-4)
  odd = images[:, :19, :27]  # reflect-padded to 20 x 28 inside the predictor, then cropped back
  np.testing.assert_allclose(np.asarray(predict["onnx"](variables, odd)), np.asarray(predict["xla"](variables, odd)),
                             atol=1e-4)


@pytest.mark.slow
def test_engines_agree_on_a_restored_checkpoint(tiny, tmp_path):
  model, variables = tiny
  saver = checkpoint.Checkpoints(str(tmp_path))
  saver.save(7, {"params": variables["params"], "batch_stats": variables["batch_stats"], "step": np.int32(7)},
             val_dice=0.5)
  saver.close()
  restored, step = checkpoint.restore_variables(str(tmp_path), abstract_variables(model), "best")
  assert step == 7
  image = textured((64, 64), 5)
  run = {engine: np.asarray(windows.sliding_window_predict(windows.predictor(model, "none", engine), restored,
                                                             image, (64, 64), 0.0, "constant", 1))
         for engine in engines.ENGINES}
  np.testing.assert_allclose(run["onnx"], run["xla"], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_engines_agree_on_class_probabilities(output):
  model = UNet(depth=2, base_features=4, num_classes=3, output=output)
  variables = spread_variables(model)
  image = textured((45, 70), 1)
  run = {engine: np.asarray(windows.sliding_window_predict(windows.predictor(model, "flips", engine), variables,
                                                             image, (32, 32), 0.5, "gaussian", 3))
         for engine in engines.ENGINES}
  assert run["onnx"].shape == (45, 70, 3) and run["xla"].std() > 0.05
  np.testing.assert_allclose(run["onnx"], run["xla"], atol=1e-4)
  if output == "softmax":
    np.testing.assert_allclose(run["onnx"].sum(-1), 1.0, atol=1e-5)
  graph = onnx_export.export_onnx(model, variables, (1, 32, 32, 1))
  assert [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim] == [1, 32, 32, 3]


def test_config_check_lets_class_models_run_on_onnx():
  c = unet2d.get_config("tiny")
  c.data.name, c.data.labels_root, c.model.num_classes, c.model.output = "folder", "labels", 3, "softmax"
  c.eval.engine = "onnx"
  config_check.validate(c)


def test_bad_engine_is_one_line():
  with pytest.raises(InputError, match=r"eval.engine must be one of \('xla', 'onnx'\), got 'tensorrt'") as e:
    engines.forward(UNet(depth=2, base_features=4), "tensorrt")
  assert "\n" not in str(e.value)


def test_models_onnx_cannot_run_are_refused_in_one_line():
  for model, field in ((UNet(depth=2, base_features=8, dtype=jnp.bfloat16), "model.dtype='float32'"),
                       (UNet(depth=2, base_features=8, norm="group"), "model.norm='group'")):
    with pytest.raises(InputError, match=f"eval.engine='onnx' .*{field}.*use eval.engine='xla'") as e:
      engines.forward(model, "onnx")
    assert "\n" not in str(e.value)


def test_onnx_engine_without_onnxruntime_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
  with pytest.raises(InputError) as e:
    engines.forward(UNet(depth=2, base_features=4), "onnx")
  message = str(e.value)
  assert "eval.engine='onnx' needs onnxruntime" in message and onnx_export.INSTALL in message
  assert "onnxruntime==" in onnx_export.INSTALL and "\n" not in message
