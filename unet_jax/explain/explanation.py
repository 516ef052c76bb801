"""Explaining a trained U-Net's answer on one slice: which objects, each explained on a crop, and the filters.

An object is what a user points at (`--object`, `parse_objects`):
- `N`: predicted mitochondrion N, a connected component of the thresholded prediction (as in the
  evaluation report: 4-connected, the predictor's minimum object size), numbered 1..n within the slice in
  scan order;
- `y,x`: the predicted component under that pixel, or, where the network found nothing, the true
  (missed) mitochondrion under it;
- `y0,x0,y1,x1`: every pixel of that box (ends exclusive);
- `all`: all predicted foreground of the slice, as one object (explained on the whole slice);
- `every`: each predicted mitochondrion in turn; `cases`: with ground truth, the largest correctly
  found one, the largest false positive and the largest missed one.
Several may be joined with ';'. With ground truth, predicted objects are true or false positives
by one-to-one matching at IoU >= eval.iou_thresholds[0] (unet_jax.scores.instances), missed ones false
negatives.

A K-class model (model.num_classes > 1) explains the objects of one class (`class_index`): its connected
components in the argmax label map, matched against the true map's components of that class, with that
class's summed probability over the object as the score (`probe.class_weights`); filters are ranked by that
class's Dice.

Each object is explained on a crop of `explain.crop` pixels (0: eval.window) centred on it, grown
to cover it and clipped to the slice, so each method costs seconds on a CPU; the score explained
is the sum of the object's logits (unet_jax.explain.probe). Per object: integrated gradients from black and
blurred baselines with their completeness errors (steps doubled from `explain.ig_steps` until the
error is below `explain.ig_tolerance`, at most `explain.ig_max_steps`), optional SmoothGrad, Seg-Grad-CAM at
`explain.cam_layers`, deletion curves (most attributed vs random order), the cascading
randomisation test, and exact and estimated importance of every filter. Once per run: each
filter's drop in validation Dice, the first-layer kernels, and for the top filters of
`explain.gallery_layers` their most activating validation patches and activation maximisation.
"""

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.explain import attribution, explain_report, filters, probe, sanity
from unet_jax.inference import windows
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, outputs, stacks
from unet_jax.io.stacks import StackReader
from unet_jax.network.model import build_model, UNet
from unet_jax.scores import instances

STATUSES = ("true positive", "false positive", "false negative")
EMPTY = ("nothing to explain: the prediction of this slice is empty (no component of the minimum object size or "
         "more at the threshold), so nothing was written; point at a box y0,x0,y1,x1 or a pixel y,x, or choose another "
         "--slice")


@dataclasses.dataclass(frozen=True)
class Target:
  """One object to explain: `pixels` bool[H, W] of the slice, explained on the crop `box`."""
  name: str  # file-safe, e.g. 'pred_12', 'missed_3', 'box_0_0_64_64', 'foreground'
  title: str
  status: str | None  # one of STATUSES, or None (no ground truth, a box, all foreground)
  pixels: np.ndarray
  box: tuple[int, int, int, int]  # y0, x0, y1, x1 (ends exclusive)


@dataclasses.dataclass(frozen=True)
class SliceObjects:
  """A slice's predicted and true components and how they match."""
  pred_labels: np.ndarray  # i32[H, W], 0 background, 1..n_pred
  true_labels: np.ndarray | None  # i32[H, W], 1..n_true; None without ground truth
  pred_status: dict[int, str]  # predicted id -> 'true positive' | 'false positive' (with truth)
  missed: list[int]  # true ids without a matched prediction


def slice_objects(pred: np.ndarray, truth: np.ndarray | None, min_size: int, iou: float,
                  min_area: int = 0) -> SliceObjects:
  """Components of the prediction bool[H, W] (>= min_size and >= min_area px) and of the truth, matched at `iou`."""
  pred_labels = instances.label_instances(pred[None], 2, min_size, min_area)[0]
  if truth is None:
    return SliceObjects(pred_labels, None, {}, [])
  true_labels = instances.label_instances(truth[None], 2)[0]
  true_index, pred_index, _ = instances.match(instances.overlaps(true_labels, pred_labels), iou)
  matched = set((pred_index + 1).tolist())
  status = {p: STATUSES[0] if p in matched else STATUSES[1] for p in range(1, pred_labels.max() + 1)}
  missed = sorted(set(range(1, true_labels.max() + 1)) - set((true_index + 1).tolist()))
  return SliceObjects(pred_labels, true_labels, status, missed)


def crop_box(pixels: np.ndarray, size: int) -> tuple[int, int, int, int]:
  """A box (y0, x0, y1, x1) of side `size` centred on `pixels` bool[H, W], grown to cover them, clipped."""
  ys, xs = np.nonzero(pixels)
  box = []
  for lo, hi, dim in ((ys.min(), ys.max() + 1, pixels.shape[0]), (xs.min(), xs.max() + 1, pixels.shape[1])):
    extent = min(dim, max(size, hi - lo))
    start = int(np.clip((lo + hi - extent) // 2, 0, dim - extent))
    box.append((start, start + extent))
  return box[0][0], box[1][0], box[0][1], box[1][1]


def _ints(text: str) -> list[int]:
  """The integers of an object spec 'N', 'y,x' or 'y0,x0,y1,x1'; raises InputError for anything else."""
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) not in (1, 2, 4):
    raise InputError(f"cannot read object {text!r}; use an id N, a pixel y,x, a box y0,x0,y1,x1, "
                     "'all', 'every' or 'cases' (several joined by ';')")
  return values


def parse_objects(spec: str, objects: SliceObjects, crop: int, noun: str = "mitochondrion") -> list[Target]:
  """The targets named by `spec` (see the module docstring), each called a `noun` (the class's name); raises
  InputError listing what is valid."""
  labels, truth = objects.pred_labels, objects.true_labels
  shape = labels.shape
  n_pred = int(labels.max())
  ids = f"ids 1..{n_pred}" if n_pred else "none (the prediction is empty)"

  def predicted(i: int) -> Target:
    pixels = labels == i
    status = objects.pred_status.get(i)
    return Target(f"pred_{i}", f"predicted {noun} {i}" + (f" ({status})" if status else ""),
                  status, pixels, crop_box(pixels, crop))

  def missed(i: int) -> Target:
    pixels = truth == i
    return Target(f"missed_{i}", f"missed {noun} (true {i}, false negative)", STATUSES[2], pixels,
                  crop_box(pixels, crop))

  targets = []
  for part in [p.strip() for p in spec.split(";") if p.strip()] or [spec]:
    if part == "all":
      if not n_pred:
        raise InputError(f"--object=all: {EMPTY}")
      targets.append(Target("foreground", "all predicted foreground", None, labels > 0, (0, 0, *shape)))
    elif part == "every":
      if not n_pred:
        raise InputError(f"--object=every: {EMPTY}")
      targets += [predicted(i) for i in range(1, n_pred + 1)]
    elif part == "cases":
      if truth is None:
        raise InputError("--object=cases needs ground truth (a split, or --input with --mask); use an id, "
                         f"a pixel or a box ({ids})")
      sizes = np.bincount(labels.ravel(), minlength=n_pred + 1)
      for status in STATUSES[:2]:
        found = [i for i, s in objects.pred_status.items() if s == status]
        if found:
          targets.append(predicted(max(found, key=lambda i: sizes[i])))
      if objects.missed:
        true_sizes = np.bincount(truth.ravel())
        targets.append(missed(max(objects.missed, key=lambda i: true_sizes[i])))
    else:
      values = _ints(part)
      if len(values) == 1:
        if not 1 <= values[0] <= n_pred:
          raise InputError(f"no predicted {noun} {values[0]} in this slice; valid {ids}")
        targets.append(predicted(values[0]))
      elif len(values) == 2:
        y, x = values
        if not (0 <= y < shape[0] and 0 <= x < shape[1]):
          raise InputError(f"pixel ({y}, {x}) is outside the slice; valid y in 0..{shape[0] - 1}, "
                           f"x in 0..{shape[1] - 1}")
        if labels[y, x]:
          targets.append(predicted(int(labels[y, x])))
        elif truth is not None and truth[y, x]:
          if int(truth[y, x]) not in objects.missed:
            raise InputError(f"pixel ({y}, {x}) is in a true mitochondrion whose prediction lies elsewhere; "
                             f"point at a predicted pixel or use an id ({ids})")
          targets.append(missed(int(truth[y, x])))
        else:
          raise InputError(f"pixel ({y}, {x}) is background (no predicted or true mitochondrion); point at "
                           f"one, or use an id ({ids}) or a box y0,x0,y1,x1")
      elif len(values) == 4:
        y0, x0, y1, x1 = values
        if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
          raise InputError(f"box {part} is empty or outside the slice; valid 0 <= y0 < y1 <= {shape[0]}, "
                           f"0 <= x0 < x1 <= {shape[1]}")
        pixels = np.zeros(shape, bool)
        pixels[y0:y1, x0:x1] = True
        targets.append(Target(f"box_{y0}_{x0}_{y1}_{x1}", f"box y {y0}:{y1}, x {x0}:{x1}", None, pixels,
                              crop_box(pixels, crop)))
  if not targets:
    raise InputError(f"--object={spec!r} selects nothing in this slice (predicted {ids}; "
                     f"missed: {objects.missed or 'none'})")
  return targets


def check_explain_config(model: UNet, ex: Any) -> None:
  """Raises InputError for `config.explain` values this model cannot use (layer names, sizes); each field's
  own range is checked by `config_check.validate`."""
  if model.ndim != 2 or getattr(model, "in_channels", 1) != 1:
    raise InputError("explanations support single-channel 2D models (model.ndim=2, no context slices)")
  for name in (*ex.cam_layers, *ex.gallery_layers):
    probe.check_block(model, name)
  if ex.ig_max_steps < ex.ig_steps:
    raise InputError(f"explain.ig_max_steps={ex.ig_max_steps} must be >= explain.ig_steps={ex.ig_steps}")
  factor = math.lcm(*model.plan().size_factors)
  if ex.actmax_px % factor:
    raise InputError(f"explain.actmax_px={ex.actmax_px} must be a positive multiple of {factor} (2**model.depth, "
                     "times model.space_to_depth)")


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
  return out


def explain_steps(model: UNet, ex: Any, rank_filters: bool = True, sanity_checks: bool = True) -> int:
  """How many times `explain_object` calls its `on_step` with these settings (a progress bar's length)."""
  return (len(attribution.BASELINES) + bool(ex.smoothgrad_samples) + len(ex.cam_layers) + 2  # 2 deletion curves
          + bool(sanity_checks) + (1 + len(probe.block_names(model)) if rank_filters else 0))


def explain_object(model: UNet, variables: Any, image: np.ndarray, weights: np.ndarray, ex: Any,
                   key: jax.Array, rank_filters: bool = True, sanity_checks: bool = True,
                   on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Every per-object explanation of the object `weights` f32[h, w] (f32[h, w, K] for a K-class model:
  `probe.class_weights`) on the crop `image` f32[h, w].

  Returns maps (f32[h, w]), numbers and per-method seconds ('seconds'); see the module docstring.
  `on_step(method)` is called after each computation (a viewer's progress bar; raising there stops the work).
  """
  image, weights = jnp.asarray(image, jnp.float32), jnp.asarray(weights, jnp.float32)
  t: dict[str, float] = {}

  def _step(name: str, fn: Callable[[], Any]) -> Any:
    out = _timed(t, name, fn)
    if on_step is not None:
      on_step(name)
    return out

  out: dict[str, Any] = {"maps": {}, "seconds": t}
  bases = {kind: attribution.baseline(image, kind, ex.blur_sigma) for kind in attribution.BASELINES}
  for kind, base in bases.items():
    attr, score, base_score, steps = _step(f"ig_{kind}", lambda: attribution.integrated_gradients_to_tolerance(
        model, variables, image, weights, base, ex.ig_steps, ex.ig_max_steps, ex.ig_tolerance, ex.batch_size))
    out["maps"][f"ig_{kind}"] = attr
    out[f"ig_{kind}"] = {"score": score, "baseline_score": base_score, "sum": float(attr.sum()), "steps": steps,
                         "completeness_error": attribution.completeness_error(attr, score, base_score)}
  out["score"] = out["ig_black"]["score"]
  key_sg, key_random, key_sanity = jax.random.split(key, 3)
  if ex.smoothgrad_samples:
    out["maps"]["smoothgrad"] = _step("smoothgrad", lambda: attribution.smoothgrad(
        model, variables, image, weights, key_sg, ex.smoothgrad_samples, ex.smoothgrad_noise, ex.batch_size))
  for layer in ex.cam_layers:
    out["maps"][f"cam_{layer}"] = np.asarray(_step("seg_grad_cam", lambda: attribution.seg_grad_cam(
        model, variables, image, weights, layer)))
  orders = {"attribution": attribution.most_attributed_first(out["maps"]["ig_blurred"]),
            "random": np.asarray(jax.random.permutation(key_random, image.size)).astype(np.int32)}
  curves = {name: _step("deletion_curves", lambda: attribution.deletion_curve(
      model, variables, image, weights, bases["blurred"], order, ex.deletion_points, ex.batch_size))
            for name, order in orders.items()}
  out["deletion"] = {"curves": {k: v.tolist() for k, v in curves.items()},
                     "auc": {k: attribution.curve_area(v) for k, v in curves.items()}}
  out["deletion"]["passed"] = out["deletion"]["auc"]["attribution"] < out["deletion"]["auc"]["random"]
  if sanity_checks:
    explain = lambda v: attribution.integrated_gradients(model, v, image, weights, bases["blurred"],
                                                         ex.sanity_steps, ex.batch_size)[0]
    rows = _step("randomisation", lambda: sanity.randomisation_test(model, variables, explain, key_sanity))
    out["randomisation"] = [{k: r[k] for k in ("stage", "spearman", "spearman_abs")} for r in rows]
    out["randomisation_maps"] = {r["stage"]: r["map"] for r in rows}
  if rank_filters:
    estimates = _step("filter_estimate", lambda: filters.gradient_x_activation(model, variables, image, weights))
    out["filters"] = {}
    for layer in probe.block_names(model):
      exact = _step("filter_ablation", lambda: filters.score_drop_per_channel(
          model, variables, image, weights, layer, 2 * ex.batch_size))
      estimate = np.asarray(estimates[layer])
      out["filters"][layer] = {"exact": exact, "estimate": estimate,
                               "spearman": sanity.rank_correlation(exact, estimate)}
  return out


def validation_tiles(image: np.ndarray, mask: np.ndarray, window: int, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(tiles f32[N, s, s], masks u8[N, s, s]): `count` non-overlapping windows of a stack [Z, H, W], evenly spread.

  count = 0 takes every tile, which covers the stack (the last row and column overlap the border).
  """
  size = min(window, *image.shape[1:])
  origins = [(z, *o) for z in range(image.shape[0])
             for o in windows.window_grid(image.shape[1:], (size, size), 0.0)]
  if count:
    origins = [origins[i] for i in np.unique(np.linspace(0, len(origins) - 1, count).round().astype(int))]
  cut = lambda a: np.stack([a[z, y:y + size, x:x + size] for z, y, x in origins])
  return cut(image).astype(np.float32), cut(mask).astype(np.uint8)


def rank_filters_on_validation(model: UNet, variables: Any, tiles: np.ndarray, masks: np.ndarray, threshold: float,
                               ex: Any, timings: dict[str, float], class_index: int = 0) -> dict[str, Any]:
  """{'dice': float, 'layers': {block: f32[C] Dice drops}} over validation tiles (of class `class_index`'s Dice
  for a K-class model, whose masks are label maps)."""
  layers, dice = {}, 0.0
  for layer in probe.block_names(model):
    dice, zeroed = _timed(timings, "dice_ablation", lambda: filters.dice_per_channel_zeroed(
        model, variables, tiles, masks, layer, threshold, max(1, ex.batch_size // 4), class_index))
    layers[layer] = dice - zeroed
  return {"dice": dice, "layers": layers}


def filter_pictures(model: UNet, variables: Any, tiles: np.ndarray, ranking: dict[str, np.ndarray], ex: Any,
                    key: jax.Array, timings: dict[str, float]) -> dict[str, Any]:
  """First-layer kernels; per gallery layer its top filters by `ranking`, their patches and maximising images."""
  out: dict[str, Any] = {"kernels": filters.first_layer_kernels(variables), "layers": {}}
  for layer, layer_key in zip(ex.gallery_layers, jax.random.split(key, len(ex.gallery_layers))):
    top = np.argsort(-ranking[layer], kind="stable")[:ex.gallery_filters]
    patch = min(tiles.shape[1], 96, 12 * 2 ** probe.block_level(model, layer))
    patches, values = _timed(timings, "top_patches", lambda: filters.top_activating_patches(
        model, variables, tiles, layer, top, ex.gallery_patches, patch))
    images = _timed(timings, "activation_maximisation", lambda: filters.maximize_activation(
        model, variables, layer, top, layer_key, ex.actmax_px, ex.actmax_steps))
    out["layers"][layer] = {"channels": top, "patches": patches, "activations": values, "maximising": images}
  return out


def load_slice(config: Any, split: str, z: int, input_path: str | None, mask_path: str | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any] | None, str]:
  """(image f32[H, W], truth bool[H, W] | None, val {'image', 'mask'} | None, source description).

  From a split of `config.data` (its val split then ranks filters by Dice), or from page `z` of the
  TIFF `input_path` (with `mask_path` its truth, which then also serves for the Dice ranking). For a K-class
  model the truth and val masks are label maps (class ids).
  """
  k = config.model.num_classes
  if input_path:
    with StackReader(input_path) as reader:
      if not 0 <= z < len(reader):
        raise InputError(f"--slice={z} is outside {input_path}; valid slices 0..{len(reader) - 1}")
      image = reader[z]
      shape = reader.shape
    truth = None
    if mask_path:
      mask = stacks.read_stack(mask_path)
      if mask.shape != shape:
        raise InputError(f"--mask {mask_path} has shape {mask.shape}, the input {shape}; they must match")
      truth = (data.binarize_mask(mask[z], mask_path).astype(bool) if k == 1
               else data.check_labels(mask[z], k, mask_path))
    val = None if truth is None else {"image": image[None], "mask": truth[None], "source": f"{input_path} slice {z}"}
    return image, truth, val, f"{input_path} slice {z}"
  if split not in ("train", "val", "test"):
    raise InputError(f"--split={split!r} is not a split; valid splits: train, val, test")
  splits = data.load_splits(config.data, k)
  stack = splits[split]
  if not 0 <= z < stack.image.shape[0]:
    raise InputError(f"--slice={z} is outside the {split} split; valid slices 0..{stack.image.shape[0] - 1}")
  val = {"image": splits["val"].image, "mask": splits["val"].mask, "source": "val split"}
  return stack.image[z], stack.mask[z].astype(bool) if k == 1 else stack.mask[z], val, f"{split} split slice {z}"


def class_name(config: Any, class_index: int | None) -> str | None:
  """The name of the class a K-class model explains (`data.class_names`, else 'class k'); None for a binary
  model. InputError for a class index the model does not have (or any given to a binary model)."""
  k = config.model.num_classes
  if k == 1:
    if class_index not in (None, 0):
      raise InputError(f"--class_index={class_index} needs a multi-class model (model.num_classes > 1); a binary "
                       "model explains its mitochondria: leave --class_index out")
    return None
  names = list(config.data.get("class_names", ())) or [f"class {c}" for c in range(k)]
  if class_index is None or not 0 <= class_index < k:
    choices = ", ".join(f"{c} {n}" for c, n in enumerate(names))
    raise InputError(f"a {k}-class model explains the objects of one class; give --class_index in 0..{k - 1} "
                     f"({choices})" + ("" if class_index is None else f", got {class_index}"))
  return names[class_index]


def explain(config: Any, workdir: str, output_dir: str, object_spec: str, split: str = "test", z: int = 0,
            input_path: str | None = None, mask_path: str | None = None, rank_filters: bool = True,
            sanity_checks: bool = True, command: str | None = None, class_index: int | None = None,
            ) -> dict[str, Any]:
  """Explains the objects `object_spec` of one slice (of class `class_index` for a K-class model); writes panels,
  explain.json and explain.md to `output_dir`."""
  outputs.check_creatable(output_dir, "output folder")  # before any work, creating nothing
  model = build_model(config.model)
  ex = config.explain
  check_explain_config(model, ex)
  name = class_name(config, class_index)
  c = class_index or 0
  image, truth, val, source = load_slice(config, split, z, input_path, mask_path)
  predictor = Predictor.load(config, workdir)
  variables, step = predictor.variables, predictor.step
  probs = predictor.probabilities(image)
  if name is not None:  # one class of a label map, as a binary model's mask and probabilities
    pred, probs, truth = predictor.label_map(probs) == c, probs[..., c], None if truth is None else truth == c
  else:
    pred = predictor.segment(probs)
  objects = slice_objects(pred, truth, predictor.min_size, config.eval.iou_thresholds[0], predictor.min_area)
  crop = ex.crop or predictor.settings["window"][0]
  targets = parse_objects(object_spec, objects, crop, name or "mitochondrion")
  key = jax.random.PRNGKey(ex.seed)
  results = []
  for target, target_key in zip(targets, jax.random.split(key, len(targets))):
    y0, x0, y1, x1 = target.box
    weights = probe.class_weights(target.pixels[y0:y1, x0:x1].astype(np.float32), model.num_classes, c)
    result = explain_object(model, variables, image[y0:y1, x0:x1], weights, ex, target_key, rank_filters,
                            sanity_checks)
    results.append((target, result))
  run_timings: dict[str, float] = {}
  dataset: dict[str, Any] = {}
  if rank_filters:
    if val is not None:
      tiles, masks = validation_tiles(val["image"], val["mask"], crop, ex.dice_tiles)
      dataset["dice"] = {"source": val["source"], "tiles": int(len(tiles)), "tile_px": int(tiles.shape[1]),
                         **rank_filters_on_validation(model, variables, tiles, masks, predictor.raw_threshold, ex,
                                                    run_timings, c)}
      gallery_tiles, ranking = tiles, dataset["dice"]["layers"]
    else:  # no truth anywhere: rank by the objects' summed score drops, patches from this slice
      gallery_tiles = validation_tiles(image[None], np.zeros((1, *image.shape)), crop, ex.dice_tiles)[0]
      ranking = {layer: sum(r["filters"][layer]["exact"] for _, r in results) for layer in probe.block_names(model)}
    dataset["ranking_by"] = "validation Dice drop" if val is not None else "summed object score drop"
    dataset["pictures"] = filter_pictures(model, variables, gallery_tiles, ranking, ex,
                                          jax.random.fold_in(key, 1), run_timings)
  return explain_report.write(output_dir, model, config, workdir, step, source, image, probs, truth,
                              predictor.summary(), results, dataset, run_timings, command,
                              None if name is None else {"index": c, "name": name})
