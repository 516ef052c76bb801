"""Whole-stack segmentation streamed from a TIFF to TIFFs, in memory that does not grow with the stack.

The input is read one page at a time (`StackReader`) and segmented in blocks of a few whole slices
on the global sliding-window grid (unet_jax/inference/tiling.py, the code chunked OME-Zarr segmentation uses):
2D models slice by slice, 2.5D ones with their neighbouring slices as channels, 3D ones on their
windows; the streamed volume equals `windows.sliding_window_predict` on the whole volume up to
float rounding. Probabilities (float32, float16, or uint8 = round(255 p)) and the mask
(uint8 0/255) are appended page by page (zlib-compressed multi-page TIFFs, ImageJ/Fiji readable).
The mask is the stored probabilities thresholded: segmentation.tif == (probabilities.tif, as floats,
uint8 / 255, >= eval.threshold) pixel for pixel, whatever the dtype's rounding.

Nothing is written before every check has passed; each output is written under a temporary name and
renamed when complete, so a failed run leaves earlier results in `output_dir` byte-identical, and
an output can never replace the input (unet_jax/io/outputs.py).

  with StackReader("stack.tif") as reader:
    report = segment_stack(model, variables, reader, "out/", config.eval)
"""

import contextlib
import os
from typing import Any, Callable, Iterator

import numpy as np
import tifffile
import tqdm

from unet_jax.errors import InputError
from unet_jax.inference import tiling, windows
from unet_jax.io import checkpoint, data, outputs
from unet_jax.io.stacks import StackReader
from unet_jax.network.model import abstract_variables, build_model, UNet
from unet_jax.scores import calibration, metrics

PROBABILITY_DTYPES = ("float32", "float16", "uint8")
OUTPUT_FILES = ("probabilities.tif", "segmentation.tif", "summary.json")


def stream_probabilities(predict: windows.Predict, variables: Any, pages: Callable[[int], np.ndarray],
                         shape: tuple[int, int, int], window: tuple[int, ...], overlap: float = 0.5,
                         blend: str = "gaussian", batch_size: int = 8, sigma: float = 0.125,
                         context_slices: int = 0, block_depth: int | None = None) -> Iterator[np.ndarray]:
  """Yields probabilities f32[H, W] for z = 0, 1, ... of a stack of `shape` (Z, H, W) given by `pages(z)`.

  `predict` takes the model's windows (`windows.predictor`): 2D ones run each slice alone (with
  2k + 1 neighbouring slices as channels when `context_slices` = k > 0), 3D ones the volume. Blocks
  of `block_depth` whole slices (default: 8, or twice a 3D window's depth, so that few windows are
  run twice) on the global window grid (unet_jax/inference/tiling.py): the same code as chunked OME-Zarr
  segmentation, equal to `windows.sliding_window_predict` up to float rounding.
  """
  if len(window) == 2:
    window, predict = (1, *window), tiling.on_slices(predict)
  block_depth = block_depth or max(8, 2 * window[0])
  tiles = tiling.plan(shape, window, overlap, (block_depth, shape[1], shape[2]), context_slices)
  read = lambda box: np.stack([pages(z)[box[1:]] for z in range(box[0].start, box[0].stop)])
  for block in tiles.blocks:
    yield from tiling.block_probabilities(predict, variables, read, tiles, block, blend, batch_size, sigma)


def stored_probabilities(prob: np.ndarray, dtype: str) -> np.ndarray:
  """Probabilities f32[...] as written in `dtype` (uint8: round(255 p))."""
  return np.round(prob * 255).astype(np.uint8) if dtype == "uint8" else prob.astype(dtype)


def stored_as_float(stored: np.ndarray) -> np.ndarray:
  """Stored probabilities back as float32 (uint8 / 255): what thresholding the saved file sees."""
  return stored.astype(np.float32) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float32)


@contextlib.contextmanager
def _page_writer(path: str, shape: tuple[int, int, int], dtype: np.dtype) -> Iterator[Callable[[np.ndarray], None]]:
  """A function appending pages to a zlib-compressed multi-page TIFF (BigTIFF when large), written atomically."""
  with outputs.atomic_path(path) as tmp:
    with tifffile.TiffWriter(tmp, bigtiff=int(np.prod(shape)) * np.dtype(dtype).itemsize > 2 ** 31) as writer:
      yield lambda page: writer.write(page, compression="zlib", metadata=None)


def segment_stack(model: UNet, variables: Any, reader: StackReader, output_dir: str, eval_config: Any,
                  mask: StackReader | None = None, probability_dtype: str = "float16",
                  progress: bool = True, temperature: float = 1.0) -> dict[str, Any]:
  """Segments `reader`'s stack into output_dir/{probabilities,segmentation}.tif, page by page.

  Probabilities are temperature-scaled by `temperature` (unet_jax/scores/calibration.py; 1: as the network
  gives them), then thresholded at `eval.threshold`; with a ground-truth `mask` (same shape, 0/1 or 0/255) the
  returned summary also holds pixel scores, counted slice by slice.
  """
  if probability_dtype not in PROBABILITY_DTYPES:
    raise InputError(f"probability dtype must be one of {PROBABILITY_DTYPES}, got {probability_dtype!r}")
  if mask is not None and mask.shape != reader.shape:
    raise InputError(f"mask shape {mask.shape} != image shape {reader.shape}; they must match voxel for voxel")
  settings = windows.window_settings(eval_config, model.ndim)
  predict = windows.predictor(model, eval_config.tta, eval_config.engine)
  paths = {"probabilities": os.path.join(output_dir, OUTPUT_FILES[0]),
           "segmentation": os.path.join(output_dir, OUTPUT_FILES[1])}
  outputs.check_writable(output_dir, "output folder")
  counts = np.zeros(4, np.int64)
  probs = stream_probabilities(predict, variables, reader.__getitem__, reader.shape, **settings,
                               context_slices=(model.in_channels - 1) // 2)
  with _page_writer(paths["probabilities"], reader.shape, np.dtype(probability_dtype)) as write_prob, \
       _page_writer(paths["segmentation"], reader.shape, np.dtype(np.uint8)) as write_seg:
    for z, prob in enumerate(tqdm.tqdm(probs, total=len(reader), unit="slice", disable=not progress)):
      stored = stored_probabilities(calibration.apply_temperature(prob, temperature), probability_dtype)
      pred = stored_as_float(stored) >= eval_config.threshold
      write_prob(stored)
      write_seg(pred.astype(np.uint8) * 255)
      if mask is not None:
        truth = data.binarize_mask(mask.raw(z), f"mask slice {z}")
        counts += metrics.slice_counts(pred[None], truth[None])[0]
  summary = {"input": reader.path, "shape": list(reader.shape), **settings, "window": list(settings["window"]),
             "tta": eval_config.tta, "engine": eval_config.engine, "temperature": temperature,
             "threshold": eval_config.threshold, "probability_dtype": probability_dtype, **paths}
  if mask is not None:
    c = dict(zip(metrics.COUNTS, map(int, counts)))
    summary["pixel"] = {**c, **metrics.scores_from_counts(c)}
  return summary


def restore_network(config: Any, workdir: str) -> tuple[UNet, Any, int, float]:
  """(model, variables, checkpoint step, temperature) of `workdir`'s `eval.checkpoint` (1 unless `eval.calibrate`)."""
  model = build_model(config.model)
  variables, step = checkpoint.restore_variables(workdir, abstract_variables(model), config.eval.checkpoint)
  temperature = calibration.load_temperature(workdir, step) if config.eval.calibrate else 1.0
  return model, variables, int(step), temperature


def val_threshold(config: Any, workdir: str) -> float:
  """The `eval.threshold_candidates` value of best Dice on the config's val split for `workdir`'s checkpoint,
  as evaluate.py's reports choose it: the threshold of --input under `eval.select_threshold`."""
  try:
    val = data.load_splits(config.data)["val"]
  except InputError as e:
    raise InputError(f"eval.select_threshold chooses the threshold on the val split, which could not be read "
                     f"({e}); give --config.eval.select_threshold=False --config.eval.threshold=T") from None
  model, variables, _, temperature = restore_network(config, workdir)
  probs = calibration.apply_temperature(windows.predict_stack(model, variables, val.image, config.eval), temperature)
  return metrics.best_dice_threshold(probs, val.mask, config.eval.threshold_candidates)[0]


def segment_file(config: Any, workdir: str, input_path: str, output_dir: str, mask_path: str | None = None,
                 probability_dtype: str = "float16", progress: bool = True) -> dict[str, Any]:
  """Segments the TIFF `input_path` with `workdir`'s checkpoint (`eval.checkpoint`) into `output_dir`.

  Writes probabilities.tif, segmentation.tif and summary.json there (scores too, given `mask_path`).
  """
  outputs.check_not_inputs([os.path.join(output_dir, f) for f in OUTPUT_FILES], [input_path, mask_path])
  with contextlib.ExitStack() as stack:
    reader = stack.enter_context(StackReader(input_path))
    mask = stack.enter_context(StackReader(mask_path)) if mask_path else None
    outputs.check_writable(output_dir, "output folder")
    model, variables, step, temperature = restore_network(config, workdir)
    summary = segment_stack(model, variables, reader, output_dir, config.eval, mask,
                            probability_dtype, progress, temperature)
  summary = {"workdir": workdir, "checkpoint": config.eval.checkpoint, "step": step,
             "notes": reader.notes, **summary}
  outputs.write_json(os.path.join(output_dir, OUTPUT_FILES[2]), summary)
  return summary
