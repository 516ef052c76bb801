"""Multi-class segmentation: the K-class head, losses, label maps, augmentation, per-class scores, inference."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data
from unet_jax.network.model import build_model, UNet
from unet_jax.scores import classes
from unet_jax.training import augment, losses, trainer


def class_config(num_classes: int = 3, output: str = "softmax"):
  """The tiny config as a K-class model (data from a labelled folder that tests do not read)."""
  c = unet2d.get_config("tiny")
  c.data.name, c.data.labels_root = "folder", "labels"
  c.model.num_classes, c.model.output = num_classes, output
  return c


def toy_stack(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Slices f32[n, size, size] and labels u8: background 0 (grey), discs 1 (bright), squares 2 (dark), noisy."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  labels = np.zeros((n, size, size), np.uint8)
  for z in range(n):
    for _ in range(2):
      cy, cx, r = rng.integers(6, size - 6, 2).tolist() + [int(rng.integers(3, 6))]
      labels[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
      y0, x0, s = rng.integers(0, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
      labels[z, y0:y0 + s, x0:x0 + s] = 2
  image = np.choose(labels, [0.5, 0.85, 0.15]) + 0.05 * rng.standard_normal(labels.shape)
  return np.clip(image, 0, 1).astype(np.float32), labels


def test_binary_default_keeps_parameter_names_shapes_and_outputs():
  config = unet2d.get_config("tiny")
  assert config.model.num_classes == 1 and config.model.output == "sigmoid"
  model = build_model(config.model)
  assert model == UNet(ndim=2, depth=2, base_features=4, norm="batch", upsample="resize",
                       kernel_sizes=model.kernel_sizes, pool_factors=model.pool_factors)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  paths = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
  assert paths["['head']['kernel']"] == (1, 1, 4, 1) and paths["['head']['bias']"] == (1,)
  assert {p.split("]")[0] for p in paths} == {"['enc0'", "['enc1'", "['bottleneck'", "['up1'", "['up0'", "['dec1'",
                                              "['dec0'", "['head'"}
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1))
  logits = model.apply(variables, x)
  assert logits.shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(model.probabilities(logits), jax.nn.sigmoid(logits))


def test_k_class_head_has_k_logits_and_softmax_sums_to_one():
  model = build_model(class_config(3).model)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  assert variables["params"]["head"]["kernel"].shape == (1, 1, 4, 3)
  probs = model.probabilities(model.apply(variables, jnp.full((1, 32, 32, 1), 0.5)))
  np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-6)


def reference_losses(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, smooth: float) -> dict[str, float]:
  """NumPy softmax cross-entropy (weighted per pixel by its class) and mean soft Dice over the classes."""
  k = logits.shape[-1]
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  p, onehot = np.exp(logp), np.eye(k)[labels]
  w = weights[labels]
  ce = np.sum(-w * np.sum(onehot * logp, -1)) / np.sum(w)
  dice = [(2 * np.sum(p[..., c] * onehot[..., c]) + smooth) / (p[..., c].sum() + onehot[..., c].sum() + smooth)
          for c in range(k)]
  mean_dice = np.sum(weights * dice) / np.sum(weights)
  return {"bce": ce, "dice": 1 - mean_dice, "log_dice": -np.log(mean_dice), "bce_dice": ce + 1 - mean_dice}


@pytest.mark.parametrize("name", ["bce", "dice", "log_dice", "bce_dice"])
def test_class_losses_equal_numpy_reference(name):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 8, 8)).astype(np.int32)
  weights = np.array([0.5, 1.0, 2.0])
  got = losses.class_loss_value(name, jnp.asarray(logits), jnp.asarray(labels[..., None]), "softmax", 1.0,
                                tuple(weights))
  assert float(got) == pytest.approx(reference_losses(logits, labels, weights, 1.0)[name], rel=1e-5)


def test_sigmoid_classes_average_per_class_binary_losses():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (1, 8, 8, 1))
  per_class = [losses.loss_value("bce", logits[..., c:c + 1], (labels == c).astype(np.float32)) for c in range(3)]
  got = losses.class_loss_value("bce", logits, labels, "sigmoid")
  assert float(got) == pytest.approx(float(np.mean(per_class)), rel=1e-6)


def reference_confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
  matrix = np.zeros((k, k), np.int64)
  for t, p in zip(truth.ravel(), pred.ravel()):
    matrix[t, p] += 1
  return matrix


def test_per_class_scores_equal_numpy_reference():
  rng = np.random.default_rng(2)
  k = 4
  truth = rng.integers(0, k - 1, (3, 16, 16))  # class 3 absent from truth ...
  pred = np.where(rng.uniform(size=truth.shape) < 0.7, truth, rng.integers(0, k - 1, truth.shape))  # ... and pred
  scores = classes.class_scores(pred, truth, k)
  matrix = reference_confusion(pred, truth, k)
  np.testing.assert_array_equal(scores["confusion"], matrix)
  for c in range(k):
    tp = np.sum((pred == c) & (truth == c))
    fp, fn = np.sum((pred == c) & (truth != c)), np.sum((pred != c) & (truth == c))
    dice = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    assert scores["dice"][c] == pytest.approx(dice) and scores["iou"][c] == pytest.approx(iou)
  assert scores["dice"][3] == 1.0 and scores["mean_dice"] == pytest.approx(np.mean(scores["dice"]))
  assert scores["accuracy"] == pytest.approx(np.mean(pred == truth))
  flat = classes.flat_scores(scores)
  assert flat["dice"] == scores["mean_dice"] and flat["dice_2"] == scores["dice"][2]


def test_label_out_of_range_is_one_line_naming_the_values():
  labels = np.array([[0, 1, 7], [3, 2, 1]], np.uint8)
  with pytest.raises(InputError) as e:
    data.check_labels(labels, 3, "training_labels.tif")
  message = str(e.value)
  assert "\n" not in message and "{3, 7}" in message and "model.num_classes=8" in message
  np.testing.assert_array_equal(data.check_labels(labels, 8), labels)
  with pytest.raises(InputError, match="non-integer"):
    data.check_labels(np.array([0.5, 1.0]), 3)


def test_labelled_folder_reads_images_and_label_maps(tmp_path):
  import tifffile  # pylint: disable=g-import-not-at-top
  image, labels = toy_stack(5)
  for name, stack in (("training.tif", image), ("testing.tif", image[:2])):
    tifffile.imwrite(tmp_path / name, stack, photometric="minisblack")
  (tmp_path / "labels").mkdir()
  tifffile.imwrite(tmp_path / "labels" / "training_labels.tif", labels, photometric="minisblack")
  tifffile.imwrite(tmp_path / "labels" / "testing_labels.tif", labels[:2], photometric="minisblack")
  c = class_config(3)
  c.data.root, c.data.labels_root = str(tmp_path), str(tmp_path / "labels")
  splits = data.load_splits(c.data, 3)
  np.testing.assert_array_equal(np.concatenate([splits["train"].mask, splits["val"].mask]), labels)
  with pytest.raises(InputError, match=r"outside 0\.\.1"):
    data.load_splits(c.data, 2)


def test_config_checks_of_class_fields():
  config_check.validate(unet2d.get_config("vnc_classes"))
  c = unet2d.get_config("tiny")
  c.model.output = "softmax"
  with pytest.raises(InputError, match="num_classes > 1"):
    config_check.validate(c)
  c = class_config(3)
  c.train.class_weights = (1.0, 2.0)
  with pytest.raises(InputError, match="class_weights"):
    config_check.validate(c)
  c = class_config(3)
  c.eval.select_threshold = True
  with pytest.raises(InputError, match="argmax"):
    config_check.validate(c)


@pytest.mark.parametrize("flips_only", [True, False])
def test_augmentation_keeps_label_maps_integer_and_aligned(flips_only):
  image, labels = toy_stack(4, 64)
  intensity = (labels / 2.0).astype(np.float32)[..., None]  # an image that is the label map
  c = unet2d.get_config("synthetic,aug=flips").augment
  for name in augment.PROB_FIELDS:
    if not flips_only and name in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob"):
      c[name] = 1.0
    elif name not in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob"):
      c[name] = 0.0
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  out_image, out_labels = augment.augment_batch(keys, jnp.asarray(intensity), jnp.asarray(labels[..., None], jnp.int32), c)
  out_labels = np.asarray(out_labels)
  assert out_labels.dtype == np.int32 and set(np.unique(out_labels)) <= {0, 1, 2}
  from_image = np.round(np.asarray(out_image) * 2).astype(np.int32)
  agree = np.mean(from_image == out_labels)
  assert agree == 1.0 if flips_only else agree > 0.95
  assert not np.array_equal(out_labels[..., 0], labels)  # something moved


@pytest.mark.slow
def test_toy_three_classes_learned_and_predicted_through_the_predictor():
  c = class_config(3)
  augment.apply_preset(c, "none")
  c.optim.learning_rate, c.optim.warmup_steps, c.train.batch_size = 1e-2, 5, 8
  c.model.base_features = 8
  c.train.loss = "bce_dice"
  model = build_model(c.model)
  steps = 60
  c.train.steps = steps
  state = trainer.create_train_state(c, model, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(trainer.train_step, config=c, axis_name=None))
  image, labels = toy_stack(16, 32, seed=1)
  batch = {"image": jnp.asarray(image[:8, ..., None]), "mask": jnp.asarray(labels[:8, ..., None], jnp.float32)}
  batch2 = {"image": jnp.asarray(image[8:, ..., None]), "mask": jnp.asarray(labels[8:, ..., None], jnp.float32)}
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  for i in range(steps):
    state, metrics = step(state, batch if i % 2 == 0 else batch2, keys)
  assert np.isfinite(float(metrics["loss"]))
  test_image, test_labels = toy_stack(2, 64, seed=9)
  c.eval.window, c.eval.overlap = 32, 0.5
  predictor = Predictor.create(model, {"params": state.params, "batch_stats": state.batch_stats}, c.eval)
  probs = predictor.raw_probabilities(test_image)
  assert probs.shape == (2, 64, 64, 3)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  scores = classes.class_scores(predictor.label_map(probs), test_labels, 3)
  assert min(scores["dice"]) > 0.9, scores["dice"]


def write_labelled_folder(root) -> None:
  """A tiny labelled folder: training/testing.tif in `root`, label maps in `root`/labels."""
  import tifffile  # pylint: disable=g-import-not-at-top
  image, labels = toy_stack(6)
  (root / "labels").mkdir()
  tifffile.imwrite(root / "training.tif", image[:4], photometric="minisblack")
  tifffile.imwrite(root / "testing.tif", image[4:], photometric="minisblack")
  tifffile.imwrite(root / "labels" / "training_labels.tif", labels[:4], photometric="minisblack")
  tifffile.imwrite(root / "labels" / "testing_labels.tif", labels[4:], photometric="minisblack")


@pytest.mark.slow
def test_train_then_evaluate_reports_per_class_dice(tmp_path):
  from unet_jax.reports import class_report  # pylint: disable=g-import-not-at-top
  write_labelled_folder(tmp_path)
  c = class_config(3)
  c.data.root, c.data.labels_root = str(tmp_path), str(tmp_path / "labels")
  c.data.val_fraction = 0.25
  c.train.steps = c.train.eval_every = c.train.checkpoint_every = c.train.log_every = 2
  c.train.batch_size, c.train.tensorboard, c.host_devices = 2, False, 1
  c.train.class_sampling = (1.0, 1.0, 2.0)
  c.eval.object_classes, c.eval.calibrate, c.eval.min_size = (1, 2), True, 2
  c.data.class_names = ("background", "disc", "square")
  config_check.validate(c)
  scores = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert {"dice", "dice_0", "dice_1", "dice_2", "iou_2"} <= set(scores)
  report = class_report.evaluate_classes(c, [str(tmp_path / "run")], str(tmp_path / "report"), ["val", "test"],
                                         save_predictions=True)
  val, run = report["runs"]
  assert len(run["dice"]) == 3 and np.asarray(run["confusion"]).sum() == 2 * 32 * 32
  assert run["intervals"]["mean_dice"]["estimate"] == pytest.approx(run["mean_dice"])
  assert run["intervals"]["per_class"][2]["dice"]["n"] == 2  # slices
  assert set(run["objects"]) == set(run["review"]) == {"1", "2"} and set(run["objects"]["1"]) == {"2d", "3d"}
  assert run["objects"]["2"]["2d"][0]["n_true"] > 0 and "intervals" in run["objects"]["2"]["2d"][0]
  assert run["calibration"]["temperature"] > 0 and run["calibration"]["applied"] and val["calibration"]["in_sample"]
  stored = json.loads((tmp_path / "run" / "calibration.json").read_text())
  assert stored[str(run["step"])]["temperature"] == run["calibration"]["temperature"]
  for key in ("class_maps", "reliability_diagram", "class_reliability_diagram", "labels_tif", "review_c2_2d_csv"):
    for path in np.atleast_1d(run["files"][key]):
      assert (tmp_path / "report" / path).is_file(), path
  markdown = (tmp_path / "report" / "class_report.md").read_text()
  assert "| run | test | 2 square |" in markdown and "### 1 disc: 2D components" in markdown
