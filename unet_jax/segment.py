"""Whole-stack segmentation streamed from a TIFF to TIFFs, in memory that does not grow with the stack.

The input is read one page at a time (`StackReader`); a 2D model runs sliding-window inference
slice by slice, a 3D model on slabs one window deep, one row of windows along Z at a time, whose
weighted sums are added into a rolling buffer and written out as soon as no later window touches
a slice (so the streamed volume equals `inference.sliding_window_predict` on the whole volume, up
to float rounding). Probabilities (float16, or uint8 = round(255 p)) and the thresholded mask
(uint8 0/255) are appended page by page (zlib-compressed multi-page TIFFs, ImageJ/Fiji readable).

  with StackReader("stack.tif") as reader:
    report = segment_stack(model, variables, reader, "out/", config.eval)
"""

import contextlib
import json
import os
from typing import Any, Callable, Iterator

import numpy as np
import tifffile
import tqdm

from unet_jax import checkpoint, data, inference, metrics
from unet_jax.errors import InputError
from unet_jax.model import UNet, abstract_variables, build_model

PROBABILITY_DTYPES = ("float16", "uint8")


class StackReader:
  """Pages f32[H, W] in [0, 1] of a 2D or 3D (Z, H, W) TIFF, read lazily one at a time.

  Normalisation follows `data.normalize_image` over the whole stack: unsigned integers are divided
  by their dtype's maximum page by page; floats and signed integers need the stack's range, which
  one streaming pass finds first. Files that store the stack in a single page are read whole.
  """

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise InputError(f"file not found: {path}; check the --input path")
    try:
      self._tif = tifffile.TiffFile(path)
      all_series = self._tif.series
      series = all_series[0]
    except Exception as e:  # tifffile raises many types for corrupt files
      raise InputError(f"cannot read TIFF {path} ({type(e).__name__}: {e}); is it a valid TIFF?") from e
    if len(series.shape) not in (2, 3) or 0 in series.shape:
      self._tif.close()
      raise InputError(f"{path}: expected a 2D image or a 3D stack (Z, Y, X), got shape {series.shape}; "
                       "multi-channel images are not supported, save one channel")
    self.path = path
    self.dtype = np.dtype(series.dtype)
    if len(series.shape) == 2 and all(s.shape == series.shape and s.dtype == series.dtype for s in all_series):
      pages = [s.pages[0] for s in all_series]  # one 2D series per page, e.g. written page by page
    else:
      pages = series.pages
    self.shape = (len(pages), *series.shape) if len(series.shape) == 2 else tuple(series.shape)
    if len(pages) == self.shape[0] and all(p is not None and p.shape == self.shape[1:] for p in pages):
      self._raw = lambda z: pages[z].asarray()
    else:  # the whole stack in one page
      whole = series.asarray().reshape(self.shape)
      self._raw = lambda z: whole[z]
    self._range = None if np.issubdtype(self.dtype, np.unsignedinteger) else self._value_range()

  def _value_range(self) -> tuple[float, float]:
    """(min, max) over the stack, one page at a time; raises InputError for non-finite values."""
    if not (np.issubdtype(self.dtype, np.floating) or np.issubdtype(self.dtype, np.signedinteger)):
      raise InputError(f"{self.path} has unsupported dtype {self.dtype}; use uint8, uint16 or float")
    lo, hi = np.inf, -np.inf
    for z in range(self.shape[0]):
      page = self._raw(z).astype(np.float32)
      if not np.all(np.isfinite(page)):
        raise InputError(f"{self.path} contains NaN or infinite values; clean the stack first")
      lo, hi = min(lo, float(page.min())), max(hi, float(page.max()))
    return lo, hi

  def __len__(self) -> int:
    return self.shape[0]

  def raw(self, z: int) -> np.ndarray:
    """Page `z` as stored."""
    return np.asarray(self._raw(z)).reshape(self.shape[1:])

  def __getitem__(self, z: int) -> np.ndarray:
    """Page `z` normalised to f32[H, W] in [0, 1]."""
    page = self.raw(z)
    if self._range is None:
      return data.normalize_image(page)
    lo, hi = self._range
    page = page.astype(np.float32)
    if lo >= 0.0 and hi <= 1.0:
      return page
    return (page - lo) / (hi - lo) if hi > lo else np.zeros_like(page)

  def close(self) -> None:
    self._tif.close()

  def __enter__(self) -> "StackReader":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def stream_probabilities(predict: inference.Predict, variables: Any, pages: Callable[[int], np.ndarray],
                         shape: tuple[int, int, int], window: tuple[int, ...], overlap: float = 0.5,
                         blend: str = "gaussian", batch_size: int = 8,
                         sigma: float = 0.125) -> Iterator[np.ndarray]:
  """Yields probabilities f32[H, W] for z = 0, 1, ... of a stack of `shape` (Z, H, W) given by `pages(z)`.

  A 2D `window` runs each slice alone; a 3D one runs slabs one window deep along Z (see module doc).
  In 2D the next slice is dispatched before the previous result is fetched, so reading and
  writing overlap with the computation.
  """
  sums = lambda image: inference.window_sums(predict, variables, image, window, overlap, blend, batch_size, sigma)
  depth = shape[0]
  if len(window) == 2:
    pending = None
    for z in range(depth):
      total, norm = sums(pages(z))
      if pending is not None:
        yield np.asarray(pending)
      pending = total / norm
    yield np.asarray(pending)
    return
  if depth <= window[0]:  # one slab: the whole (small) volume
    total, norm = sums(np.stack([pages(z) for z in range(depth)]))
    yield from np.asarray(total / norm)
    return
  starts = inference.window_starts(depth, window[0], overlap)
  cache: dict[int, np.ndarray] = {}
  totals: dict[int, np.ndarray] = {}
  norms: dict[int, np.ndarray] = {}
  written = 0
  for row, start in enumerate(starts):
    slab = range(start, start + window[0])
    cache = {z: cache[z] if z in cache else pages(z) for z in slab}
    total, norm = map(np.asarray, sums(np.stack([cache[z] for z in slab])))
    for k, z in enumerate(slab):
      totals[z] = totals.get(z, 0.0) + total[k]
      norms[z] = norms.get(z, 0.0) + norm[k]
    done = starts[row + 1] if row + 1 < len(starts) else depth  # no later window reaches below `done`
    for z in range(written, done):
      yield totals.pop(z) / norms.pop(z)
    written = done


class _PageWriter:
  """Appends pages to a zlib-compressed multi-page TIFF (one series), BigTIFF when large."""

  def __init__(self, path: str, shape: tuple[int, int, int], dtype: np.dtype):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._writer = tifffile.TiffWriter(path, bigtiff=int(np.prod(shape)) * np.dtype(dtype).itemsize > 2 ** 31)

  def write(self, page: np.ndarray) -> None:
    self._writer.write(page, compression="zlib", metadata=None)

  def close(self) -> None:
    self._writer.close()


def segment_stack(model: UNet, variables: Any, reader: StackReader, output_dir: str, eval_config: Any,
                  mask: StackReader | None = None, probability_dtype: str = "float16",
                  progress: bool = True) -> dict[str, Any]:
  """Segments `reader`'s stack into output_dir/{probabilities,segmentation}.tif, page by page.

  Thresholds at `eval.threshold`; with a ground-truth `mask` (same shape, 0/1 or 0/255) the
  returned summary also holds pixel scores, counted slice by slice.
  """
  if probability_dtype not in PROBABILITY_DTYPES:
    raise InputError(f"probability dtype must be one of {PROBABILITY_DTYPES}, got {probability_dtype!r}")
  if mask is not None and mask.shape != reader.shape:
    raise InputError(f"mask shape {mask.shape} != image shape {reader.shape}; they must match voxel for voxel")
  settings = inference.window_settings(eval_config, model.ndim)
  predict = inference.predictor(model, eval_config.tta)
  paths = {"probabilities": os.path.join(output_dir, "probabilities.tif"),
           "segmentation": os.path.join(output_dir, "segmentation.tif")}
  prob_writer = _PageWriter(paths["probabilities"], reader.shape, np.dtype(probability_dtype))
  seg_writer = _PageWriter(paths["segmentation"], reader.shape, np.dtype(np.uint8))
  counts = np.zeros(4, np.int64)
  probs = stream_probabilities(predict, variables, reader.__getitem__, reader.shape, **settings)
  try:
    for z, prob in enumerate(tqdm.tqdm(probs, total=len(reader), unit="slice", disable=not progress)):
      pred = prob >= eval_config.threshold
      prob_writer.write(prob.astype(np.float16) if probability_dtype == "float16"
                        else np.round(prob * 255).astype(np.uint8))
      seg_writer.write(pred.astype(np.uint8) * 255)
      if mask is not None:
        truth = data.binarize_mask(mask.raw(z), f"mask slice {z}")
        counts += metrics.slice_counts(pred[None], truth[None])[0]
  finally:
    prob_writer.close()
    seg_writer.close()
  summary = {"input": reader.path, "shape": list(reader.shape), **settings, "window": list(settings["window"]),
             "tta": eval_config.tta,
             "threshold": eval_config.threshold, "probability_dtype": probability_dtype, **paths}
  if mask is not None:
    c = dict(zip(metrics.COUNTS, map(int, counts)))
    summary["pixel"] = {**c, **metrics.scores_from_counts(c)}
  return summary


def segment_file(config: Any, workdir: str, input_path: str, output_dir: str, mask_path: str | None = None,
                 probability_dtype: str = "float16", progress: bool = True) -> dict[str, Any]:
  """Segments the TIFF `input_path` with `workdir`'s checkpoint (`eval.checkpoint`) into `output_dir`.

  Writes probabilities.tif, segmentation.tif and summary.json there (scores too, given `mask_path`).
  """
  with contextlib.ExitStack() as stack:
    reader = stack.enter_context(StackReader(input_path))
    mask = stack.enter_context(StackReader(mask_path)) if mask_path else None
    model = build_model(config.model)
    variables, step = checkpoint.restore_variables(workdir, abstract_variables(model), config.eval.checkpoint)
    summary = segment_stack(model, variables, reader, output_dir, config.eval, mask,
                            probability_dtype, progress)
  summary = {"workdir": workdir, "checkpoint": config.eval.checkpoint, "step": int(step), **summary}
  with open(os.path.join(output_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
