"""A trained model ready to predict: the one seam every tool that runs a network goes through.

A `Predictor` holds a network and its variables (a checkpoint of a workdir, or live training
variables), the sliding-window settings of `config.eval` (window, overlap, blend, batch size,
sigma, test-time augmentation, engine), the calibration temperature and the decision threshold.
Evaluation reports, validation during training, streamed TIFF and chunked OME-Zarr segmentation,
explanations, ensembles, export and the benchmarks all take one, so for one config they predict,
calibrate and threshold alike.

`load(config, workdir)` restores `eval.checkpoint` once and settles the two decisions:
- temperature: with `eval.calibrate`, the one fitted on the val split for this checkpoint and these
  settings (workdir/calibration.json; fitted and stored when missing), else 1;
- threshold: with `eval.select_threshold`, the `eval.threshold_candidates` value of best Dice on the
  (calibrated) val probabilities (workdir/threshold.json; chosen and stored when missing or made
  under other settings), else `eval.threshold`;
- minimum object size (predicted volume components smaller than it are not objects: instance scores,
  morphometry, review lists, the viewer's objects, explanations): with `eval.select_min_size`, the
  `eval.min_size_candidates` value of best instance F1 on the val split at that threshold (stored
  with the threshold), else `eval.min_size`; in 2D instances, profiles under `eval.min_area` pixels
  are not objects either (unet_jax/scores/instances.py), a fixed setting the choice is made with.
The val split is read only when a decision is not stored; the test split never decides anything.

Every prediction runs the block-wise path of unet_jax/inference/tiling.py on the volume's global
window grid: 2D models slice by slice, 2.5D ones with their neighbouring slices as channels, 3D ones
on their windows. In memory, streamed page by page or chunk by chunk, the result is the same up to
float rounding.

A predictor knows the voxel size of its training data (`voxel_size_nm`, recorded in the workdir's log
and in exported packages). `on_input` compares an input's with it (unet_jax/inference/magnification.py);
when they differ, each block of the input is resampled to the model's voxel size, with the margin its
windows and interpolation need, predicted on the model's grid and resampled back, so outputs match the
input voxel for voxel and blocks still equal the whole volume.
"""

import dataclasses
import functools
import json
import os
import zipfile
from typing import Any, Callable, Iterator

import flax.serialization
import jax
import ml_collections
import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference import magnification, tiling, windows
from unet_jax.io import checkpoint, data, outputs, runlog
from unet_jax.network.model import abstract_variables, build_model, UNet
from unet_jax.scores import calibration, class_calibration, instances, metrics

THRESHOLD_FILE = "threshold.json"
PACKAGE_VARIABLES, PACKAGE_SETTINGS = "unet_jax_variables.msgpack", "unet_jax_predictor.json"  # in exported packages

Pages = Callable[[int], np.ndarray]  # z -> slice z f32[H, W], normalised


def decisions(eval_config: Any, val_probs: np.ndarray | None = None,
              val_mask: np.ndarray | None = None) -> dict[str, Any]:
  """The threshold and minimum object size `config.eval` decides: {'value', 'source', 'min_size',
  'min_size_source', ...}; the size is chosen at the chosen threshold."""
  threshold = choose_threshold(eval_config, val_probs, val_mask)
  val_pred = None if val_probs is None else val_probs >= threshold["value"]
  return {**threshold, **choose_min_size(eval_config, val_pred, val_mask)}


def choose_threshold(eval_config: Any, val_probs: np.ndarray | None = None,
                     val_mask: np.ndarray | None = None) -> dict[str, Any]:
  """The threshold policy of `config.eval`: {'value', 'source', ...}.

  `eval.threshold` as given, or with `eval.select_threshold` the candidate of best Dice on the
  val probabilities and mask (never the test split's); the result then lists every candidate
  with its val Dice.
  """
  if not eval_config.select_threshold:
    return _config_threshold(eval_config)
  if val_probs is None or val_mask is None:
    raise InputError("eval.select_threshold needs the val split's probabilities and mask")
  candidates = [float(t) for t in eval_config.threshold_candidates]
  best, dice = metrics.best_dice_threshold(val_probs, val_mask, candidates)
  return {"value": float(best), "source": f"best Dice on the val split over {len(candidates)} candidates",
          "val_dice": float(max(dice)), "candidates": candidates, "candidate_val_dice": [float(d) for d in dice]}


def choose_min_size(eval_config: Any, val_pred: np.ndarray | None = None,
                    val_mask: np.ndarray | None = None) -> dict[str, Any]:
  """The minimum object size policy of `config.eval`: {'min_size', 'min_size_source', ...}.

  `eval.min_size` as given, or with `eval.select_min_size` the candidate of best instance F1 at IoU
  `eval.iou_thresholds[0]` on the val split's prediction bool[Z, H, W] (never the test split's), the mean
  over 2D and 3D components (the report's two object counts); ties go to the smaller size, which drops
  fewer objects. What it removes is small spurious components: they cost instance precision and
  morphometry, never pixel Dice, which is scored without the filter.
  """
  e = eval_config
  if not e.select_min_size:
    return _config_min_size(e)
  if val_pred is None or val_mask is None:
    raise InputError("eval.select_min_size needs the val split's prediction and mask")
  candidates = sorted(int(c) for c in e.min_size_candidates)
  f1 = np.mean([instances.f1_by_min_size(val_mask, val_pred, dims, candidates, e.iou_thresholds[0],
                                         _min_area(e)) for dims in instances.DIMS], axis=0)
  return {"min_size": candidates[int(np.argmax(f1))],  # the first of equal maxima: the smallest size
          "min_area": _min_area(e),
          "min_size_source": f"best instance F1 on the val split over {len(candidates)} candidates",
          "min_size_candidates": candidates, "candidate_val_f1": [float(v) for v in f1]}


def fixed_threshold(eval_config: Any) -> dict[str, Any]:
  """`eval.threshold` and `eval.min_size` as the decision record, whatever the policy (no val split read)."""
  return {**_config_threshold(eval_config), **_config_min_size(eval_config)}


def _config_threshold(eval_config: Any) -> dict[str, Any]:
  return {"value": float(eval_config.threshold), "source": "config eval.threshold"}


def _config_min_size(eval_config: Any) -> dict[str, Any]:
  """Inference-only settings (windows, no scoring) may lack `min_size`: then every component counts."""
  return {"min_size": int(eval_config.get("min_size", 0)), "min_size_source": "config eval.min_size",
          "min_area": _min_area(eval_config)}


def _min_area(eval_config: Any) -> int:
  """Settings and packages made before `eval.min_area` existed count every profile."""
  return int(eval_config.get("min_area", 0))


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A network, its variables, its inference settings and its decisions (temperature, threshold with the
  minimum object size)."""
  model: UNet
  variables: Any
  settings: dict[str, Any]  # windows.window_settings: window, overlap, blend, batch_size, sigma
  tta: str = "none"
  engine: str = "xla"
  step: int = 0
  temperature: float = 1.0
  threshold: dict[str, Any] = dataclasses.field(default_factory=lambda: {"value": 0.5, "source": "default",
                                                                          "min_size": 0})
  fitted_temperature: float | None = None  # fitted on val by `decide`, applied only with eval.calibrate
  voxel_size_nm: tuple[float, float, float] | None = None  # (z, y, x) of the training data; None: not recorded
  resampling: magnification.Resampling | None = None  # an input's grid onto the model's (`on_input`)

  @classmethod
  def create(cls, model: UNet, variables: Any, eval_config: Any, step: int = 0) -> "Predictor":
    """A predictor of `variables` with the `config.eval` settings, threshold `eval.threshold`, no calibration."""
    return cls(model, variables, windows.window_settings(eval_config, model.ndim), eval_config.tta,
               eval_config.engine, int(step), 1.0, fixed_threshold(eval_config))

  @classmethod
  def restore(cls, config: Any, workdir: str) -> "Predictor":
    """`workdir`'s `eval.checkpoint` with the `config.eval` settings, before any decision (temperature 1,
    threshold `eval.threshold`): what evaluation reports start from."""
    model = build_model(config.model)
    variables, step = checkpoint.restore_variables(workdir, abstract_variables(model), config.eval.checkpoint)
    voxel = runlog.recorded_voxel_size(workdir)
    return dataclasses.replace(cls.create(model, variables, config.eval, int(step)), voxel_size_nm=voxel)

  @classmethod
  def load(cls, config: Any, workdir: str, val: data.Split | None = None) -> "Predictor":
    """`workdir`'s `eval.checkpoint`, calibrated and thresholded as `config.eval` says (module docstring);
    given a package exported by export.py instead of a workdir (`is_package`), the predictor it carries
    (`from_package`).

    `val` is the val split when the caller has it; otherwise it is read from `config.data` only if a
    decision is not stored.
    """
    if is_package(workdir):
      return cls.from_package(workdir)
    predictor = cls.restore(config, workdir)
    e = config.eval
    chooses = e.select_threshold or e.select_min_size
    if not e.calibrate and not chooses:
      return predictor
    record = _decision_record(config, predictor)
    temperature = _stored_temperature(workdir, predictor.step, record) if e.calibrate else 1.0
    threshold = None
    if chooses and temperature is not None:
      threshold = _stored_threshold(workdir, predictor.step, {**record, **_choice_record(e)}, temperature)
    if (e.calibrate and temperature is None) or (chooses and threshold is None):
      val = val if val is not None else _val_split(config)
      raw = predictor.raw_probabilities(val.image)
      return predictor.decide(config, workdir, raw, val.mask)
    return dataclasses.replace(predictor, temperature=temperature, threshold=threshold or decisions(e))

  @classmethod
  def from_package(cls, path: str) -> "Predictor":
    """The predictor a bioimage.io package exported by export.py carries, from its .zip or the folder it
    unpacks to (its JAX variables and settings, temperature and threshold as they were at export), so tools
    run it exactly as the workdir's."""
    try:
      members = _package_members(path)
      record = json.loads(members[PACKAGE_SETTINGS])
      variables = flax.serialization.msgpack_restore(members[PACKAGE_VARIABLES])
    except InputError:
      raise
    except (OSError, zipfile.BadZipFile, ValueError) as e:
      raise InputError(f"cannot read the model package {path} ({e}); give a package made by export.py (its .zip "
                       "or the folder it unpacks to)") from None
    model = build_model(ml_collections.ConfigDict(record["model"]))
    expected = jax.tree.map(lambda a: a.shape, abstract_variables(model))
    if jax.tree.map(np.shape, variables) != expected:
      raise InputError(f"{path}: its variables do not fit the model it describes; export it again")
    eval_config = ml_collections.ConfigDict(record["eval"])
    voxel = record.get("voxel_size_nm")  # absent from packages made before it was recorded
    threshold = {**fixed_threshold(eval_config), **record["threshold"]}  # older packages: no min_size stored
    return cls(model, variables, windows.window_settings(eval_config, model.ndim), eval_config.tta,
               eval_config.engine, int(record["step"]), float(record["temperature"]), threshold,
               voxel_size_nm=tuple(float(v) for v in voxel) if voxel else None)

  def package_record(self, config: Any) -> dict[str, Any]:
    """What `from_package` needs besides the variables: the model and eval settings, the decisions and the
    training voxel size."""
    return {"model": config.model.to_dict(), "eval": config.eval.to_dict(), "step": self.step,
            "temperature": float(self.temperature), "threshold": self.threshold,
            "voxel_size_nm": list(self.voxel_size_nm) if self.voxel_size_nm else None}

  def on_input(self, voxel_size_nm: Any = None, source: str = "") -> "Predictor":
    """This predictor for inputs of voxel size `voxel_size_nm` ((y, x) or (z, y, x) nm; None: unknown, as read
    from `source`): resampled to the model's when they differ (`magnification.compare`, whose one-line note
    the summary keeps)."""
    resampling = magnification.compare(self.voxel_size_nm, voxel_size_nm, self.model.ndim, source)
    return dataclasses.replace(self, resampling=resampling)

  def decide(self, config: Any, workdir: str | None, val_raw: np.ndarray, val_mask: np.ndarray,
             ) -> "Predictor":
    """This predictor with its decisions made on the val split's raw probabilities `val_raw` f32[Z, H, W]
    and mask: the temperature fitted (stored in `workdir`/calibration.json, applied with `eval.calibrate`),
    the threshold chosen on the probabilities as calibrated (stored with `eval.select_threshold`). A K-class
    model's are f32[Z, H, W, K] and a label map, and it has no threshold (unet_jax/scores/class_calibration.py)."""
    e = config.eval
    record = _decision_record(config, self)
    if self.num_classes > 1:
      fitted = float(class_calibration.fit_temperature(val_raw, val_mask, self.model.output))
    else:
      fitted = float(calibration.fit_temperature(val_raw, val_mask))
    if workdir:
      calibration.save_temperature(workdir, {"step": self.step, "temperature": fitted, "fitted_on": "val",
                                             "pixels": int(val_mask.size), **record})
    temperature = fitted if e.calibrate else 1.0
    threshold = (fixed_threshold(e) if self.num_classes > 1
                 else decisions(e, calibration.apply_temperature(val_raw, temperature), val_mask))
    if (e.select_threshold or e.select_min_size) and workdir:
      _store_threshold(workdir, self.step, {**record, **_choice_record(e), "temperature": temperature, **threshold})
    return dataclasses.replace(self, temperature=temperature, threshold=threshold, fitted_temperature=fitted)

  @property
  def threshold_value(self) -> float:
    return float(self.threshold["value"])

  @property
  def min_size(self) -> int:
    """Predicted components of fewer voxels are not objects (module docstring)."""
    return int(self.threshold["min_size"])

  @property
  def min_area(self) -> int:
    """Profiles of fewer pixels in their section are not 2D objects (unet_jax/scores/instances.py)."""
    return int(self.threshold.get("min_area", 0))

  @property
  def raw_threshold(self) -> float:
    """The threshold on raw network probabilities equivalent to the threshold on calibrated ones:
    sigmoid(logit(p) / T) >= t exactly when p >= sigmoid(T logit(t))."""
    t = self.threshold_value
    if self.temperature == 1.0 or not 0.0 < t < 1.0:
      return t
    return float(1.0 / (1.0 + np.exp(-self.temperature * np.log(t / (1.0 - t)))))

  @property
  def num_classes(self) -> int:
    """Classes the network predicts: 1 (binary: probabilities f32[Z, H, W]) or K (f32[Z, H, W, K])."""
    return self.model.num_classes

  def label_map(self, probabilities: np.ndarray) -> np.ndarray:
    """The class id map u8[Z, H, W] of K-class probabilities f32[Z, H, W, K]: the most probable class per pixel
    (softmax or per-class sigmoids alike; no threshold). A binary model's map is its `segment` mask as 0/1."""
    if self.num_classes == 1:
      return self.segment(probabilities).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8 if self.num_classes <= 256 else np.int32)

  @property
  def context_slices(self) -> int:
    return (self.model.in_channels - 1) // 2

  def volume_window(self) -> tuple[int, int, int]:
    """The window as a 3D window: (1, h, w) for 2D and 2.5D models."""
    window = tuple(self.settings["window"])
    return window if self.model.ndim == 3 else (1, *window)

  def plan(self, shape: tuple[int, int, int], block: tuple[int, int, int] | None = None) -> tiling.Tiling:
    """The blocks of a volume f32[`shape`] on the global window grid; default blocks: 8 whole slices, or
    twice a 3D window's depth, so that few windows run twice."""
    window = self.volume_window()
    block = block or (max(8, 2 * window[0]), shape[1], shape[2])
    return tiling.plan(shape, window, self.settings["overlap"], block, self.context_slices)

  def block_probabilities(self, read: tiling.Read, tiles: tiling.Tiling, block: tiling.Block,
                          predict: windows.Predict | None = None, variables: Any = None) -> np.ndarray:
    """Raw (uncalibrated) probabilities f32[*block shape] of one block of `tiles`, read through `read`
    (by default with this predictor's network and variables). For an input at another voxel size (`on_input`)
    the model-grid voxels the block interpolates are predicted on the model grid's windows, then resampled back."""
    s = self.settings
    predict = predict or tiling.volume_predictor(self.model, self.tta, self.engine)
    variables = self.variables if variables is None else variables
    run = lambda r, t, b: tiling.block_probabilities(predict, variables, r, t, b, s["blend"], s["batch_size"],
                                                     s["sigma"])
    if self.resampling is None or self.resampling.identity:
      return run(read, tiles, block)
    grid = _model_tiling(tiles.shape, tiles.block, self.resampling.model_shape(tiles.shape), tiles.window,
                         s["overlap"], tiles.context_slices)
    on_grid = next(b for b in grid.blocks if b.index == block.index)
    prob = run(lambda box: magnification.resample_box(read, tiles.shape, grid.shape, box), grid, on_grid)
    origin = [b.start for b in on_grid.box]
    back = lambda channel: magnification.resample_box(
        lambda box: channel[tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, origin))],
        grid.shape, tiles.shape, block.box, order=magnification.PROBABILITY_ORDER)
    if prob.ndim == 3:
      return back(prob)
    return np.stack([back(prob[..., k]) for k in range(prob.shape[-1])], axis=-1)

  def _in_memory(self, image: np.ndarray, predict: windows.Predict | None = None, variables: Any = None,
                 ) -> np.ndarray:
    """`block_probabilities` over every block of a stack f32[Z, H, W] held in memory."""
    stack = np.asarray(image, np.float32)
    tiles = self.plan(stack.shape)
    read = lambda box: stack[box]
    return np.concatenate([self.block_probabilities(read, tiles, block, predict, variables)
                           for block in tiles.blocks])

  def stream(self, pages: Pages, shape: tuple[int, int, int], block_depth: int | None = None,
             ) -> Iterator[np.ndarray]:
    """Raw probabilities f32[H, W] for z = 0, 1, ... of a stack of `shape` (Z, H, W) given by `pages(z)`."""
    tiles = self.plan(shape, (block_depth, shape[1], shape[2]) if block_depth else None)
    read = lambda box: np.stack([pages(z)[box[1:]] for z in range(box[0].start, box[0].stop)])
    for block in tiles.blocks:
      yield from self.block_probabilities(read, tiles, block)

  def raw_probabilities(self, image: np.ndarray) -> np.ndarray:
    """Network probabilities, before calibration, of a stack f32[Z, H, W] in memory (or one slice f32[H, W]
    for 2D models): f32 of the same shape, with a last axis of K classes for a K-class model."""
    if image.ndim == 2:
      if self.model.ndim == 3:
        raise InputError(f"a 3D model needs a stack (Z, H, W), got one slice of shape {image.shape}")
      return self.raw_probabilities(image[None])[0]
    return self._in_memory(image)

  def transform_probabilities(self, image: np.ndarray, group: str = "dihedral") -> np.ndarray:
    """Raw probabilities f32[T, Z, H, W] of a stack under each of the T transforms of the TTA `group`
    (their mean over the predictor's own `tta` subset is `raw_probabilities`, up to float rounding)."""
    predict = tiling.on_volume(windows.transform_predictor(self.model, group, self.engine), self.model.ndim)
    return np.stack([self._in_memory(image, predict, (self.variables, np.int32(i)))
                     for i in range(len(windows.tta_transforms(group)))])

  def calibrate(self, raw: np.ndarray) -> np.ndarray:
    """Raw probabilities rescaled by this predictor's temperature (unchanged at 1)."""
    if self.num_classes > 1:
      return class_calibration.apply_temperature(raw, self.temperature, self.model.output)
    return calibration.apply_temperature(raw, self.temperature)

  def probabilities(self, image: np.ndarray) -> np.ndarray:
    """Calibrated probabilities f32 of a stack f32[Z, H, W] (or a 2D model's slice f32[H, W])."""
    return self.calibrate(self.raw_probabilities(image))

  def segment(self, probabilities: np.ndarray) -> np.ndarray:
    """The mask bool[...] of calibrated probabilities: probabilities >= the threshold."""
    return probabilities >= self.threshold_value

  def summary(self) -> dict[str, Any]:
    """What decides this predictor's output, as JSON values (for summaries and reports)."""
    summary = {"step": self.step, **self.settings, "window": list(self.settings["window"]), "tta": self.tta,
               "engine": self.engine, "temperature": float(self.temperature), "threshold": self.threshold_value,
               "threshold_source": self.threshold["source"], "min_size": self.min_size,
               "min_area": self.min_area}
    if self.resampling is not None:
      summary["voxel_size"] = self.resampling.record
    return summary


def is_package(path: str) -> bool:
  """Whether `path` is a package made by export.py rather than a training workdir: a .zip, or a folder
  holding the package's unet-jax settings (the .zip unpacked)."""
  if os.path.isfile(path):
    return zipfile.is_zipfile(path)
  return os.path.isfile(os.path.join(path, PACKAGE_SETTINGS))


def _package_members(path: str) -> dict[str, bytes]:
  """The contents of unet-jax's two files in a package's .zip or unpacked folder, by name."""
  wanted = (PACKAGE_VARIABLES, PACKAGE_SETTINGS)
  members = {}
  if os.path.isdir(path):
    for name in wanted:
      if os.path.isfile(os.path.join(path, name)):
        with open(os.path.join(path, name), "rb") as f:
          members[name] = f.read()
  else:
    with zipfile.ZipFile(path) as package:
      names = {os.path.basename(n): n for n in package.namelist()}
      members = {name: package.read(names[name]) for name in wanted if name in names}
  if len(members) < len(wanted):
    raise InputError(f"{path} is a package without unet-jax's {PACKAGE_VARIABLES} and {PACKAGE_SETTINGS}; "
                     "use a package made by export.py, or the workdir it was exported from")
  return members


@functools.lru_cache(maxsize=8)
def _model_tiling(shape: tuple[int, int, int], block: tuple[int, int, int], model_shape: tuple[int, int, int],
                  window: tuple[int, int, int], overlap: float, context_slices: int) -> tiling.Tiling:
  """The window grid of a volume of `shape` resampled to `model_shape`, with one block per block of the input's
  tiling (blocks of `block` voxels, same index): the model-grid voxels that block's output interpolates."""
  boxes = []
  for n, b, m in zip(shape, block, model_shape):
    axis = [magnification.source_box((slice(lo, hi),), (m,), (n,), order=magnification.PROBABILITY_ORDER)[0]
            for lo, hi in tiling.regular_boxes(n, b)]
    boxes.append([(s.start, s.stop) for s in axis])
  return tiling.plan_boxes(model_shape, window, overlap, boxes, context_slices)


def _val_split(config: Any) -> data.Split:
  try:
    return data.load_splits(config.data, config.model.get("num_classes", 1))["val"]
  except InputError as e:
    raise InputError(f"eval.select_threshold, eval.select_min_size and eval.calibrate decide on the val split, "
                     f"which could not be read ({e}); give --config.eval.select_threshold=False "
                     "--config.eval.select_min_size=False --config.eval.calibrate=False --config.eval.threshold=T"
                     ) from None


def _decision_record(config: Any, predictor: Predictor) -> dict[str, Any]:
  """What a stored decision depends on besides the checkpoint step: the inference settings and the val split."""
  d = config.data
  return {"checkpoint": config.eval.checkpoint, "tta": predictor.tta, **predictor.settings,
          "window": list(predictor.settings["window"]), "engine": predictor.engine,
          "val": {"name": d.name, "root": str(d.get("root", "")), "val_fraction": float(d.val_fraction),
                  "final_fit": bool(d.get("final_fit", False)),
                  **({"val_slices": int(d.val_slices)} if d.get("val_slices", 0) else {})}}


def _choice_record(eval_config: Any) -> dict[str, Any]:
  """What a stored threshold and minimum object size also depend on: the policy that chose them (a fixed
  threshold or size is the config's, read when loading, so it is not part of it) and the minimum area the
  size was chosen with."""
  e = eval_config
  return {"threshold_policy": [float(t) for t in e.threshold_candidates] if e.select_threshold else float(e.threshold),
          "min_size_policy": ({"candidates": sorted(int(c) for c in e.min_size_candidates),
                               "iou": float(e.iou_thresholds[0])} if e.select_min_size else int(e.min_size)),
          "min_area": _min_area(e)}


def _same(stored: dict[str, Any], record: dict[str, Any]) -> bool:
  return all(json.loads(json.dumps(stored.get(k))) == json.loads(json.dumps(v)) for k, v in record.items()
             if k not in ("batch_size", "engine"))  # neither changes the probabilities beyond rounding


def _stored_temperature(workdir: str, step: int, record: dict[str, Any]) -> float | None:
  """The temperature stored for checkpoint `step` under the same settings, else None."""
  stored = calibration.stored_record(workdir, step)
  return float(stored["temperature"]) if stored and _same(stored, record) else None


def _stored_threshold(workdir: str, step: int, record: dict[str, Any], temperature: float) -> dict[str, Any] | None:
  """The threshold stored for checkpoint `step` under the same settings and temperature, else None."""
  path = os.path.join(workdir, THRESHOLD_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f).get(str(int(step)))
  except (OSError, ValueError, AttributeError):
    return None  # unreadable: chosen again and rewritten
  if not stored or not _same(stored, {**record, "temperature": float(temperature)}):
    return None
  keys = ("value", "source", "val_dice", "candidates", "candidate_val_dice", "min_size", "min_size_source",
          "min_area", "min_size_candidates", "candidate_val_f1")
  return {k: stored[k] for k in keys if k in stored}


def _store_threshold(workdir: str, step: int, record: dict[str, Any]) -> None:
  """Stores the chosen threshold for checkpoint `step` in workdir/threshold.json (a note when it cannot)."""
  path = os.path.join(workdir, THRESHOLD_FILE)
  try:
    with open(path) as f:
      records = json.load(f)
    records = records if isinstance(records, dict) else {}
  except (OSError, ValueError):
    records = {}
  records[str(int(step))] = record
  try:
    outputs.write_json(path, records)
  except OSError as e:
    print(f"note: the chosen threshold could not be stored in {path} ({e.strerror}); it is chosen again next time")
