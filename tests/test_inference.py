"""Sliding-window inference, test-time augmentation and the streaming whole-stack writer."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tifffile

from unet_jax.errors import InputError
from references import sliding_window_stack
from unet_jax.inference import segment, windows
from unet_jax.inference.predictor import Predictor
from unet_jax.io import checkpoint, data, stacks, synthetic
from unet_jax.network.model import build_model, UNet
from unet_jax.scores import metrics
from unet_jax.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

identity = lambda variables, patches: patches


def blur(variables, patches):
  """A symmetric 3x3 blur with zero borders: commutes with every flip and 90-degree rotation."""
  del variables
  kernel = jnp.array([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]])[:, :, None, None] / 16
  return jax.lax.conv_general_dilated(patches, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def ramp(variables, patches):
  """Multiplies by a ramp 0..1 along W: not flip-invariant; its flip average is exactly 0.5 * input."""
  del variables
  return patches * jnp.linspace(0.0, 1.0, patches.shape[-2])[:, None]


def random_like(tree, seed=0):
  """Seeded random arrays shaped like the leaves of `tree` (shapes only, e.g. from jax.eval_shape):
  kernels N(0, 1 / fan-in), variances and scales in [0.5, 1.5], the rest N(0, 0.1).

  (Filled with NumPy: flax's initialisers take long to compile on a busy CPU.)
  """
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1]) if "kernel" in name else 100.0
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, tree)


def tiny_unet(ndim=2):
  """A depth-2 U-Net with seeded random weights and batch statistics."""
  model = UNet(ndim=ndim, depth=2, base_features=4, norm="batch", upsample="resize")
  return model, random_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + (8,) * ndim + (1,))),
                            seed=ndim)


def reference(model, variables, image, window, overlap, blend):
  """Plain NumPy loop over windows: reflect-pad to the window, blend, crop."""
  shape = image.shape
  padded = np.pad(image, [(0, max(0, w - s)) for s, w in zip(shape, window)], mode="reflect")
  factor = 2 ** model.depth
  weights = windows.blend_weights(window, blend)
  apply = jax.jit(model.apply)
  total, norm = np.zeros(padded.shape), np.zeros(padded.shape)
  for start in windows.window_grid(padded.shape, window, overlap):
    region = tuple(slice(s, s + w) for s, w in zip(start, window))
    patch = np.pad(padded[region], [(0, -w % factor) for w in window], mode="reflect")
    logits = np.asarray(apply(variables, patch[None, ..., None]))[0, ..., 0]
    prob = 1 / (1 + np.exp(-logits[tuple(slice(0, w) for w in window)]))
    total[region] += prob * weights
    norm[region] += weights
  return (total / norm)[tuple(slice(0, s) for s in shape)]


def test_window_starts_hand_computed():
  np.testing.assert_array_equal(windows.window_starts(1024, 256, 0.5), [0, 128, 256, 384, 512, 640, 768])
  # stride 16 -> ceil(68 / 16) + 1 = 6 origins spread evenly over [0, 68]
  np.testing.assert_array_equal(windows.window_starts(100, 32, 0.5), [0, 14, 27, 41, 54, 68])
  np.testing.assert_array_equal(windows.window_starts(64, 16, 0.0), [0, 16, 32, 48])
  np.testing.assert_array_equal(windows.window_starts(10, 32, 0.5), [0])


@pytest.mark.parametrize("blend", windows.BLENDS)
@pytest.mark.parametrize("shape,window", [((50, 70), (16, 16)), ((5, 7), (16, 16)), ((1, 9), (4, 4)),
                                          ((13, 20, 17), (8, 8, 8))])
def test_identity_model_returns_input(blend, shape, window):
  image = np.random.default_rng(0).random(shape, np.float32)
  out = windows.sliding_window_predict(identity, None, image, window, 0.5, blend, batch_size=3)
  assert out.shape == shape
  np.testing.assert_allclose(np.asarray(out), image, atol=1e-6)


def test_constant_and_gaussian_agree_without_overlap():
  model, variables = tiny_unet()
  image = np.random.default_rng(1).random((32, 48), np.float32)
  predict = windows.predictor(model)
  const, gauss = (windows.sliding_window_predict(predict, variables, image, (16, 16), 0.0, b, 4)
                  for b in windows.BLENDS)
  np.testing.assert_allclose(np.asarray(const), np.asarray(gauss), atol=1e-6)


@pytest.mark.parametrize("blend", windows.BLENDS)
@pytest.mark.parametrize("shape,window", [((40, 52), (16, 16)),  # 4 x 6 windows, 24 in 5 batches of 5
                                          ((21, 30), (18, 14)),  # odd image and windows not divisible by 4
                                          ((7, 5), (16, 16))])   # image smaller than the window
def test_matches_numpy_reference(blend, shape, window):
  model, variables = tiny_unet()
  image = np.random.default_rng(2).random(shape, np.float32)
  out = windows.sliding_window_predict(windows.predictor(model), variables, image, window, 0.5, blend, 5)
  np.testing.assert_allclose(np.asarray(out), reference(model, variables, image, window, 0.5, blend), atol=2e-5)


@pytest.mark.slow
def test_3d_matches_numpy_reference():
  model, variables = tiny_unet(ndim=3)
  image = np.random.default_rng(3).random((10, 14, 12), np.float32)
  out = windows.sliding_window_predict(windows.predictor(model), variables, image, (8, 8, 8), 0.5, "gaussian", 4)
  np.testing.assert_allclose(np.asarray(out), reference(model, variables, image, (8, 8, 8), 0.5, "gaussian"),
                             atol=2e-5)


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_tta_of_equivariant_model_equals_no_tta(tta):
  image = np.random.default_rng(4).random((30, 41), np.float32)
  plain = windows.sliding_window_predict(blur, None, image, (16, 16), 0.5, "gaussian", 4)
  augmented = windows.sliding_window_predict(windows.test_time_augmented(blur, tta), None, image,
                                               (16, 16), 0.5, "gaussian", 4)
  np.testing.assert_allclose(np.asarray(augmented), np.asarray(plain), atol=1e-6)


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_tta_inverts_each_transform(tta):
  """ramp(x) = x * r with r a 0..1 ramp; averaging r over the group's transforms gives 0.5 everywhere."""
  patches = jnp.asarray(np.random.default_rng(5).random((2, 8, 8, 1), np.float32))
  out = windows.test_time_augmented(ramp, tta)(None, patches)
  np.testing.assert_allclose(np.asarray(out), 0.5 * np.asarray(patches), atol=1e-6)
  np.testing.assert_allclose(np.asarray(windows.test_time_augmented(ramp, "none")(None, patches)),
                             np.asarray(ramp(None, patches)))


def test_tta_on_3d_patches_and_errors():
  volume = jnp.asarray(np.random.default_rng(6).random((1, 3, 8, 8, 1), np.float32))
  np.testing.assert_allclose(np.asarray(windows.test_time_augmented(identity, "dihedral")(None, volume)),
                             np.asarray(volume), atol=1e-6)
  with pytest.raises(InputError, match="square"):
    windows.test_time_augmented(identity, "dihedral")(None, jnp.zeros((1, 8, 6, 1)))
  with pytest.raises(InputError, match="tta"):
    windows.test_time_augmented(identity, "all")


def test_predictor_tta_runs_a_unet():
  model, variables = tiny_unet()
  image = np.random.default_rng(7).random((20, 20), np.float32)
  out = windows.sliding_window_predict(windows.predictor(model, "flips"), variables, image, (16, 16))
  assert out.shape == (20, 20) and np.all((np.asarray(out) > 0) & (np.asarray(out) < 1))


@pytest.mark.parametrize("kwargs,match", [({"blend": "box"}, "blend"), ({"overlap": 1.0}, "overlap"),
                                          ({"window": (8, 8, 8)}, "2D or both 3D"), ({"batch_size": 0}, "positive")])
def test_bad_arguments_raise_input_error(kwargs, match):
  args = {"window": (8, 8), "overlap": 0.5, "blend": "gaussian", "batch_size": 2, **kwargs}
  with pytest.raises(InputError, match=match):
    windows.sliding_window_predict(identity, None, np.zeros((10, 10), np.float32), **args)


@pytest.mark.slow
def test_stream_3d_equals_whole_volume():
  model, variables = tiny_unet(ndim=3)
  volume = np.random.default_rng(8).random((21, 12, 10), np.float32)  # z origins 0, 3, 6, 10, 13
  predict = windows.predictor(model)
  whole = np.asarray(windows.sliding_window_predict(predict, variables, volume, (8, 8, 8), 0.5, "gaussian", 4))
  predictor = Predictor.create(model, variables, eval_config(window=8, batch_size=4))
  streamed = np.stack(list(predictor.stream(volume.__getitem__, volume.shape)))
  np.testing.assert_allclose(streamed, whole, atol=1e-6)
  np.testing.assert_allclose(predictor.raw_probabilities(volume), whole, atol=1e-6)
  small = volume[:5]  # thinner than the window: one reflect-padded slab
  np.testing.assert_allclose(np.stack(list(predictor.stream(small.__getitem__, small.shape))),
                             np.asarray(windows.sliding_window_predict(predict, variables, small, (8, 8, 8), 0.5,
                                                                       "gaussian", 4)), atol=1e-6)


def eval_config(**overrides):
  c = ml_collections.ConfigDict({"window": 16, "overlap": 0.5, "blend": "gaussian", "sigma": 0.125,
                                 "batch_size": 4, "threshold": 0.5, "tta": "none", "engine": "xla"})
  c.update(overrides)
  return c


def write_pages(path, array):
  with tifffile.TiffWriter(path) as writer:
    for page in array:
      writer.write(page)


@pytest.mark.slow
@pytest.mark.parametrize("probability_dtype", segment.PROBABILITY_DTYPES)
def test_streaming_writer_equals_in_memory(tmp_path, probability_dtype):
  model, variables = tiny_unet()
  rng = np.random.default_rng(9)
  stack = (rng.random((3, 24, 37)) * 255).astype(np.uint8)
  mask = (rng.random((3, 24, 37)) > 0.5).astype(np.uint8) * 255
  write_pages(tmp_path / "stack.tif", stack)
  write_pages(tmp_path / "mask.tif", mask)
  config = eval_config(tta="flips")
  with stacks.StackReader(str(tmp_path / "stack.tif")) as reader, \
       stacks.StackReader(str(tmp_path / "mask.tif")) as truth:
    summary = segment.segment_stack(Predictor.create(model, variables, config), reader, str(tmp_path / "out"),
                                    truth, probability_dtype, progress=False)
  expected = sliding_window_stack(model, variables, stack / np.float32(255), config)
  probs = tifffile.imread(summary["probabilities"])
  seg = tifffile.imread(summary["segmentation"])
  assert probs.dtype == np.dtype(probability_dtype) and probs.shape == stack.shape
  if probability_dtype == "uint8":
    np.testing.assert_array_equal(probs, np.round(expected * 255).astype(np.uint8))
  else:
    np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-6 if probability_dtype == "float32" else 1e-3)
  # The documented rule: the mask is the stored probabilities thresholded, pixel for pixel.
  np.testing.assert_array_equal(seg, (segment.stored_as_float(probs) >= 0.5).astype(np.uint8) * 255)
  far = np.abs(expected - 0.5) > 1e-3
  np.testing.assert_array_equal((seg > 0)[far], (expected >= 0.5)[far])
  assert summary["pixel"]["dice"] == pytest.approx(metrics.pixel_scores(expected >= 0.5, mask > 0)["dice"])


def test_stack_reader_normalises_like_read_stack(tmp_path):
  rng = np.random.default_rng(10)
  for name, stack in {"u16": (rng.random((3, 6, 5)) * 65535).astype(np.uint16),
                      "f32": rng.normal(size=(3, 6, 5)).astype(np.float32) * 100,
                      "i16": rng.integers(-500, 500, (2, 6, 5)).astype(np.int16)}.items():
    path = str(tmp_path / f"{name}.tif")
    write_pages(path, stack)
    with stacks.StackReader(path) as reader:
      assert reader.shape == stack.shape
      np.testing.assert_allclose(np.stack([reader[z] for z in range(len(reader))]),
                                 stacks.normalize_image(stack), atol=1e-6)
  tifffile.imwrite(tmp_path / "one.tif", stack[0])
  with stacks.StackReader(str(tmp_path / "one.tif")) as reader:
    assert reader.shape == (1, 6, 5)


def test_stack_reader_errors(tmp_path):
  with pytest.raises(InputError, match="not found"):
    stacks.StackReader(str(tmp_path / "missing.tif"))
  tifffile.imwrite(tmp_path / "channels.tif", np.zeros((2, 2, 4, 5), np.uint8), imagej=True,
                   metadata={"axes": "ZCYX"})
  with pytest.raises(InputError, match="2 channels .*save the EM channel"):
    stacks.StackReader(str(tmp_path / "channels.tif"))
  (tmp_path / "junk.tif").write_bytes(b"not a tiff")
  with pytest.raises(InputError, match="valid TIFF"):
    stacks.StackReader(str(tmp_path / "junk.tif"))


def test_stack_reader_on_real_stacks(vnc_root):
  """VNC's testing.tif holds its 4 slices in one page (read whole); training.tif one page per slice."""
  for name in ("testing.tif", "training.tif"):
    path = os.path.join(vnc_root, name)
    with stacks.StackReader(path) as reader:
      z = len(reader) - 1
      np.testing.assert_array_equal(reader[z], stacks.normalize_image(stacks.read_stack(path)[z]))


def save_random_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int = 3) -> dict:
  """Saves random weights for `config`'s model in `workdir` at `step` (best too, val Dice 0.5); returns
  them as model variables."""
  state = jax.eval_shape(lambda: trainer.state_tree(
      trainer.create_train_state(config, build_model(config.model), jax.random.PRNGKey(0))))
  state = {**random_like(state), "step": np.int32(step)}
  saver = checkpoint.Checkpoints(workdir)
  saver.save(step, state, val_dice=0.5)
  saver.close()
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


@pytest.mark.slow
def test_cli_segments_a_tiff_with_ground_truth(tiny_config, tmp_path):
  """evaluate.py --input: a checkpoint segments a stack; the files match in-memory inference."""
  variables = save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  image, mask = synthetic.make_stack(0, 2, (40, 50))
  write_pages(tmp_path / "stack.tif", image)
  write_pages(tmp_path / "truth.tif", mask)
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path / 'run'}",
       f"--input={tmp_path / 'stack.tif'}", f"--mask={tmp_path / 'truth.tif'}", f"--output_dir={tmp_path / 'out'}",
       "--probabilities=uint8"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "out" / "summary.json") as f:
    summary = json.load(f)
  assert summary["step"] == 3 and summary["shape"] == [2, 40, 50]
  expected = sliding_window_stack(build_model(tiny_config.model), variables, image / np.float32(255),
                                  tiny_config.eval)
  np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "segmentation.tif"),
                                (expected >= 0.5).astype(np.uint8) * 255)
  np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "probabilities.tif"), expected * 255, atol=0.51)
  assert summary["pixel"]["dice"] == pytest.approx(metrics.pixel_scores(expected >= 0.5, mask > 0)["dice"])
  bad = subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                        f"--workdir={tmp_path / 'run'}", f"--input={tmp_path / 'missing.tif'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode != 0 and "error: file not found" in bad.stderr


@pytest.mark.slow
def test_cli_input_uses_the_val_chosen_threshold_under_select_threshold(tiny_config, tmp_path):
  """--input with eval.select_threshold thresholds at the val split's best candidate, as the reports do."""
  variables = save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  image, _ = synthetic.make_stack(1, 1, (40, 48))
  write_pages(tmp_path / "stack.tif", image)
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path / 'run'}",
       f"--input={tmp_path / 'stack.tif'}", f"--output_dir={tmp_path / 'out'}", "--config.eval.select_threshold=True"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  val = data.load_splits(tiny_config.data)["val"]
  val_probs = sliding_window_stack(build_model(tiny_config.model), variables, val.image, tiny_config.eval)
  chosen, _ = metrics.best_dice_threshold(val_probs, val.mask, tiny_config.eval.threshold_candidates)
  with open(tmp_path / "out" / "summary.json") as f:
    summary = json.load(f)
  assert summary["threshold"] == pytest.approx(chosen) and "best Dice on the val split" in summary["threshold_source"]


def monai_starts(size, window, overlap):
  """MONAI's window origins along one axis: steps of the stride, the last window clamped to the border."""
  stride = max(1, int(window * (1.0 - overlap)))
  starts, k = [], 0
  while True:
    starts.append(min(k * stride, max(size - window, 0)))
    if k * stride + window >= size:
      return np.array(starts)
    k += 1


@pytest.mark.parametrize("size,window,overlap", [(1024, 256, 0.5), (768, 256, 0.5), (1024, 256, 0.25), (256, 256, 0.5)])
def test_window_grid_equals_monai_where_the_stride_divides(size, window, overlap):
  """The README's claim 'equals MONAI with constant blending' holds where the two grids coincide."""
  assert (size - window) % int(window * (1 - overlap)) == 0
  np.testing.assert_array_equal(windows.window_starts(size, window, overlap), monai_starts(size, window, overlap))


def test_window_grid_differs_from_monai_otherwise():
  ours, theirs = windows.window_starts(1000, 256, 0.5), monai_starts(1000, 256, 0.5)
  assert ours[0] == theirs[0] == 0 and ours[-1] == theirs[-1] == 744 and len(ours) == len(theirs)
  assert not np.array_equal(ours, theirs)  # ours spread evenly, MONAI's last step shortened
  assert np.ptp(np.diff(ours)) <= 1 and np.ptp(np.diff(theirs)) > 1
