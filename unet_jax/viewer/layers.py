"""From napari layers' arrays to the library and back, without Qt: what each viewer widget computes.

Every number here comes from the library: predictions from `Predictor` (as `evaluate.py --input`
streams them), scores and the review list from `evaluation.stack_scores` (as the report computes
them), explanations from `explanation.explain_object` (as `explain.py` runs it for one object). The
functions only turn layer data into the arrays those take, and their results into layer data and rows.
"""

import functools
import importlib.util
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from scipy import ndimage

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.explain import explain_report, explanation
from unet_jax.inference.predictor import Predictor
from unet_jax.io import ngff, stacks
from unet_jax.reports import evaluation, uncertainty
from unet_jax.scores import instances, morphometry

FP, FN = 1, 2  # values of the error overlay: false positive pixels (red), false negative pixels (blue)
MASK_FORMATS = ("tiff", "ome-zarr")
REVIEW_COLUMNS = ("label", "centroid_z_px", "centroid_y_px", "centroid_x_px", "voxels", *uncertainty.SCORES,
                  "mean_uncertainty")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of 'path/to/config.py[:argument]', as `--config=` reads it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError(f"config file {path!r} not found; give path/to/config.py[:variant], e.g. configs/unet2d.py:vnc")
  module_spec = importlib.util.spec_from_file_location(f"unet_jax_viewer_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (whatever a config file raises is the user's to fix)
    raise InputError(f"config {spec!r} could not be read ({type(e).__name__}: {e})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"config {spec!r}: get_config() must return an ml_collections.ConfigDict")
  return config


def check_model_path(path: str) -> None:
  """Raises InputError unless `path` exists (a workdir or a package)."""
  if not path or not os.path.exists(path):
    raise InputError(f"model {path!r} not found; give a training workdir, or a package made by export.py (its "
                     ".zip or the folder it unpacks to)")


@functools.lru_cache(maxsize=4)
def load_model(config_spec: str, model_path: str) -> tuple[ml_collections.ConfigDict, Predictor]:
  """(config, predictor) of a workdir or an export.py package (.zip or unpacked folder), as `evaluate.py
  --input` loads them (the config checked as there, then `Predictor.load`: the same checkpoint, temperature and
  threshold, or the package's); kept for the next widget."""
  check_model_path(model_path)
  config = load_config(config_spec)
  config_check.validate(config, config_check.INFERENCE_SECTIONS)
  return config, Predictor.load(config, model_path)


def image_stack(data: Any, name: str) -> np.ndarray:
  """A grey 2D image or 3D stack layer's data as f32[Z, H, W] in [0, 1], normalised as TIFF pages are read."""
  return stacks.normalize_image(as_stack(data, name), f"layer {name!r}")


def voxel_size(scale: Sequence[float], config: Any) -> tuple[float, float, float]:
  """The layer's scale as the (z, y, x) voxel size in nm; a 2D layer takes z from `config.data.voxel_size_nm`."""
  scale = tuple(float(s) for s in scale)
  return scale if len(scale) == 3 else (float(config.data.voxel_size_nm[0]), *scale[-2:])


def layer_voxel_size(scale: Sequence[float]) -> tuple[float, ...] | None:
  """The voxel size in nm that a layer's scale states, (y, x) or (z, y, x); None for napari's default scale of
  1s, which states nothing (the model's voxel size is then assumed, as for a TIFF without metadata)."""
  scale = tuple(float(s) for s in scale)[-3:]
  return None if all(s == 1.0 for s in scale) else scale


def calibrated_slices(predictor: Predictor, stack: np.ndarray) -> Iterator[np.ndarray]:
  """Calibrated probabilities f32[H, W] (f32[H, W, K] for a K-class model) of z = 0, 1, ... of `stack`
  f32[Z, H, W]: `evaluate.py --input`'s (`Predictor.stream` page by page, then the predictor's temperature);
  threshold them with `predictor.segment`, or take a K-class model's classes with `predictor.label_map`."""
  for raw in predictor.stream(stack.__getitem__, stack.shape):
    yield predictor.calibrate(raw)


def check_shape(shape: Sequence[int], name: str) -> None:
  """Raises InputError unless a layer of `shape` is a 2D image (H, W) or a stack (Z, H, W)."""
  if len(shape) not in (2, 3):
    raise InputError(f"layer {name!r} has shape {tuple(shape)}; give a grey 2D image (H, W) or a stack (Z, H, W)")


def as_stack(array: np.ndarray, name: str) -> np.ndarray:
  """A layer's 2D or 3D array as [Z, H, W]."""
  array = np.asarray(array)
  check_shape(array.shape, name)
  return array if array.ndim == 3 else array[None]


def truth_mask(data: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
  """A ground-truth Labels layer as u8[Z, H, W] in {0, 1} (any label > 0 is mitochondrion)."""
  truth = as_stack(data, name)
  if truth.shape != shape:
    raise InputError(f"ground truth {name!r} has shape {truth.shape}, the prediction {shape}; they must match")
  return (truth > 0).astype(np.uint8)


def error_overlay(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """u8 of `pred`'s shape: FP where predicted but not true, FN where true but not predicted, else 0."""
  pred, truth = pred.astype(bool), truth.astype(bool)
  return np.where(pred & ~truth, FP, np.where(truth & ~pred, FN, 0)).astype(np.uint8)


def scores(probs: np.ndarray, truth: np.ndarray, predictor: Predictor, config: Any,
           voxel: Sequence[float]) -> dict[str, Any]:
  """The report's scores of calibrated probabilities f32[Z, H, W] against truth u8[Z, H, W]
  (`evaluation.stack_scores` at the predictor's threshold)."""
  return evaluation.stack_scores(probs, truth, predictor.threshold_value, predictor.min_size, config.eval, voxel,
                                 min_area=predictor.min_area)[0]


def score_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (2D/3D objects, IoU threshold): precision, recall, F1 with their intervals, and counts."""
  shown = lambda v: "-" if v is None else f"{v:.4f}"
  interval = lambda i: "-" if i.get("low") is None else f"[{i['low']:.4f}, {i['high']:.4f}]"
  rows = []
  for dims, table in result["instances"].items():
    for row in table:
      rows.append({"objects": dims, "IoU": row["iou_threshold"], "precision": shown(row["precision"]),
                   "precision CI": interval(row["intervals"]["precision"]), "recall": shown(row["recall"]),
                   "recall CI": interval(row["intervals"]["recall"]), "F1": shown(row["f1"]),
                   "F1 CI": interval(row["intervals"]["f1"]), "true": row["n_true"], "predicted": row["n_pred"],
                   "found": row["found"]})
  return rows


def _centroids(labels: np.ndarray, ids: Sequence[int]) -> list[tuple[float, float, float]]:
  return [tuple(float(c) for c in ndimage.center_of_mass(labels == i)) for i in ids]


def error_objects(pred: np.ndarray, truth: np.ndarray, predictor: Predictor, config: Any,
                  dims: int) -> list[dict[str, Any]]:
  """The false positive predicted objects and the missed true ones at the report's first IoU threshold
  (`dims`-D components, predicted ones as `object_labels` keeps them), with their centroids (z, y, x)."""
  true_labels = instances.label_instances(truth, dims)
  pred_labels = instances.label_instances(pred, dims, predictor.min_size, predictor.min_area)
  overlaps = instances.overlaps(true_labels, pred_labels)
  true_index, pred_index, _ = instances.match(overlaps, config.eval.iou_thresholds[0])
  spurious = sorted(set(range(1, overlaps.n_pred + 1)) - set((pred_index + 1).tolist()))
  missed = sorted(set(range(1, overlaps.n_true + 1)) - set((true_index + 1).tolist()))
  rows = []
  for kind, labels, ids in (("false positive", pred_labels, spurious), ("false negative", true_labels, missed)):
    for i, (z, y, x) in zip(ids, _centroids(labels, ids)):
      rows.append({"error": kind, "label": i, "voxels": int(np.sum(labels == i)), "z": round(z, 1), "y": round(y, 1),
                   "x": round(x, 1)})
  return rows


def review_list(probs: np.ndarray, pred_labels: np.ndarray, truth: np.ndarray | None, predictor: Predictor,
                config: Any, voxel: Sequence[float], dims: int, top_k: int,
                uncertainty_map: np.ndarray | None = None) -> list[dict[str, Any]]:
  """The review list, least confident first: with ground truth the report's (`stack_scores`, with 'matched'
  and 'matched_iou'); without, the same confidence columns and order for `pred_labels` (the prediction's
  `dims`-D components as `object_labels` keeps and numbers them)."""
  e = config.eval
  if truth is not None:
    settings = e.copy_and_resolve_references()
    settings.review_top_k = top_k
    result = evaluation.stack_scores(probs, truth, predictor.threshold_value, predictor.min_size, settings, voxel,
                                       uncertainty_map, min_area=predictor.min_area)[0]
    return result["review"][f"{dims}d"]["list"]
  table = morphometry.measure(pred_labels, voxel)
  table.update(uncertainty.object_confidence(probs, pred_labels, uncertainty_map))
  n = int(pred_labels.max(initial=0))
  order = uncertainty.review(table, np.ones(n, bool), top_k)["order"]  # no wrong objects known: no AUROC
  plain = lambda v: None if isinstance(v.item(), float) and np.isnan(v) else v.item()
  return [{c: plain(table[c][i]) for c in REVIEW_COLUMNS} for i in order]


def object_labels(probs: np.ndarray, predictor: Predictor, config: Any, dims: int) -> np.ndarray:
  """i32 components of the thresholded probabilities (`dims`-D, the predictor's `min_size` voxels or more and
  in 2D its `min_area` pixels or more), numbered as the report numbers its objects."""
  return instances.label_instances(predictor.segment(probs), dims, predictor.min_size, predictor.min_area)


def save_mask(labels: np.ndarray, path: str, voxel: Sequence[float]) -> str:
  """Writes `labels` > 0 as a u8 0/255 mask [Z, H, W] that the data loader reads: a TIFF, or an OME-Zarr
  image for paths ending in .zarr; returns its format."""
  mask = (as_stack(labels, "mask") > 0).astype(np.uint8) * 255
  if stacks.is_zarr(path):
    ngff.write_image(path, mask, voxel)
    return MASK_FORMATS[1]
  stacks.write_stack(path, mask)
  return MASK_FORMATS[0]


def explain_object(config: Any, predictor: Predictor, image: np.ndarray, truth: np.ndarray | None, spec: str,
                   rank_filters: bool, sanity_checks: bool, on_step: Callable[[str], None] | None = None,
                   ) -> tuple[explanation.Target, dict[str, Any], list[dict[str, Any]]]:
  """(target, result, top filters) of the first object `spec` names on the slice `image` f32[H, W], as
  `explain.py --object=spec` computes it for that slice (same objects, crop, key and maps)."""
  ex = config.explain
  explanation.check_explain_config(predictor.model, ex)
  objects = explanation.slice_objects(predictor.segment(predictor.probabilities(image)), truth, predictor.min_size,
                                      config.eval.iou_thresholds[0], predictor.min_area)
  targets = explanation.parse_objects(spec, objects, ex.crop or predictor.settings["window"][0])
  key = jax.random.split(jax.random.PRNGKey(ex.seed), len(targets))[0]
  target = targets[0]
  y0, x0, y1, x1 = target.box
  result = explanation.explain_object(predictor.model, predictor.variables, image[y0:y1, x0:x1],
                                      target.pixels[y0:y1, x0:x1].astype(np.float32), ex, key, rank_filters,
                                      sanity_checks, on_step)
  top = explain_report.top_filters(predictor.model, result, ex.top_k) if rank_filters else []
  return target, result, top
