"""Whole-stack segmentation streamed from a TIFF to TIFFs, in memory that does not grow with the stack.

The input is read one page at a time (`StackReader`) and segmented in blocks of a few whole slices
on the global sliding-window grid (unet_jax/inference/tiling.py, the code chunked OME-Zarr segmentation uses):
2D models slice by slice, 2.5D ones with their neighbouring slices as channels, 3D ones on their
windows (`Predictor.stream`); the streamed volume equals the predictor's in-memory probabilities up to
float rounding. Probabilities (float32, float16, or uint8 = round(255 p)) and the mask
(uint8 0/255) are appended page by page (zlib-compressed multi-page TIFFs, ImageJ/Fiji readable).
The mask is the stored probabilities thresholded: segmentation.tif == (probabilities.tif, as floats,
uint8 / 255, >= the predictor's threshold) pixel for pixel, whatever the dtype's rounding. A stack at
another voxel size than the model's is resampled to it block by block and back (`Predictor.on_input`).

A K-class model (model.num_classes > 1) writes segmentation.tif as its class map (u8 class ids 0..K-1,
`Predictor.label_map` of the calibrated float32 probabilities, page for page the in-memory label map) and
probabilities.tif as a (Z, K, H, W) stack (pages z-major; tifffile reads it back with that shape); with a
ground-truth label map the summary holds per-class scores from the confusion matrix, counted slice by slice.

Nothing is written before every check has passed; each output is written under a temporary name and
renamed when complete, so a failed run leaves earlier results in `output_dir` byte-identical, and
an output can never replace the input (unet_jax/io/outputs.py).

  with StackReader("stack.tif") as reader:
    summary = segment_stack(Predictor.load(config, "runs/vnc"), reader, "out/")
"""

import contextlib
import os
from typing import Any, Callable, Iterator

import numpy as np
import tifffile
import tqdm

from unet_jax.errors import InputError
from unet_jax.inference import magnification
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, ngff, outputs
from unet_jax.io.stacks import StackReader
from unet_jax.scores import classes, metrics

PROBABILITY_DTYPES = ("float32", "float16", "uint8")
OUTPUT_FILES = ("probabilities.tif", "segmentation.tif", "summary.json")


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


@contextlib.contextmanager
def _stack_writer(path: str, shape: tuple[int, ...], dtype: np.dtype,
                  ) -> Iterator[Callable[[Iterator[np.ndarray]], None]]:
  """A function writing a zlib-compressed TIFF of `shape` from an iterator of its pages (last two axes), in
  order, so that only one page is held at a time; its shape is recorded for readers. Written atomically."""
  with outputs.atomic_path(path) as tmp:
    with tifffile.TiffWriter(tmp, bigtiff=int(np.prod(shape)) * np.dtype(dtype).itemsize > 2 ** 31) as writer:
      yield lambda pages: writer.write(pages, shape=shape, dtype=dtype, compression="zlib", photometric="minisblack")


def _segment_classes(predictor: Predictor, reader: StackReader, paths: dict[str, str], mask: Any,
                     probability_dtype: str, progress: bool) -> np.ndarray:
  """Writes a K-class model's class map and (Z, K, H, W) probabilities page by page (module docstring); the
  confusion matrix i64[K, K] against `mask` (zeros without one)."""
  k = predictor.num_classes
  confusion = np.zeros((k, k), np.int64)
  with _page_writer(paths["segmentation"], reader.shape, np.dtype(np.uint8)) as write_seg, \
       _stack_writer(paths["probabilities"], (reader.shape[0], k, *reader.shape[1:]),
                     np.dtype(probability_dtype)) as write_prob:
    def pages() -> Iterator[np.ndarray]:
      probs = predictor.stream(reader.__getitem__, reader.shape)
      for z, raw in enumerate(tqdm.tqdm(probs, total=len(reader), unit="slice", disable=not progress)):
        prob = predictor.calibrate(raw)
        labels = predictor.label_map(prob)
        write_seg(labels)
        if mask is not None:
          confusion[...] += classes.confusion_matrix(labels, data.check_labels(mask.raw(z), k, f"mask slice {z}"), k)
        yield from np.moveaxis(stored_probabilities(prob, probability_dtype), -1, 0)
    write_prob(pages())
  return confusion


def segment_stack(predictor: Predictor, reader: StackReader, output_dir: str, mask: StackReader | None = None,
                  probability_dtype: str = "float16", progress: bool = True) -> dict[str, Any]:
  """Segments `reader`'s stack into output_dir/{probabilities,segmentation}.tif, page by page.

  Probabilities are the predictor's, calibrated, then thresholded at its threshold; with a ground-truth
  `mask` (same shape, 0/1 or 0/255) the returned summary also holds pixel scores, counted slice by slice.
  A K-class model writes its class map instead (module docstring), scored per class against a label-map `mask`.
  """
  if probability_dtype not in PROBABILITY_DTYPES:
    raise InputError(f"probability dtype must be one of {PROBABILITY_DTYPES}, got {probability_dtype!r}")
  if mask is not None and mask.shape != reader.shape:
    raise InputError(f"mask shape {mask.shape} != image shape {reader.shape}; they must match voxel for voxel")
  paths = {"probabilities": os.path.join(output_dir, OUTPUT_FILES[0]),
           "segmentation": os.path.join(output_dir, OUTPUT_FILES[1])}
  outputs.check_writable(output_dir, "output folder")
  if predictor.num_classes > 1:
    confusion = _segment_classes(predictor, reader, paths, mask, probability_dtype, progress)
    summary = {"input": reader.path, "shape": list(reader.shape), **predictor.summary(),
               "num_classes": predictor.num_classes, "probability_dtype": probability_dtype,
               "probabilities_axes": "zcyx", **paths}
    if mask is not None:
      summary["classes"] = {**classes.scores_from_confusion(confusion), "confusion": confusion.tolist()}
    return summary
  counts = np.zeros(4, np.int64)
  probs = predictor.stream(reader.__getitem__, reader.shape)
  with _page_writer(paths["probabilities"], reader.shape, np.dtype(probability_dtype)) as write_prob, \
       _page_writer(paths["segmentation"], reader.shape, np.dtype(np.uint8)) as write_seg:
    for z, prob in enumerate(tqdm.tqdm(probs, total=len(reader), unit="slice", disable=not progress)):
      stored = stored_probabilities(predictor.calibrate(prob), probability_dtype)
      pred = predictor.segment(stored_as_float(stored))
      write_prob(stored)
      write_seg(pred.astype(np.uint8) * 255)
      if mask is not None:
        truth = data.binarize_mask(mask.raw(z), f"mask slice {z}")
        counts += metrics.slice_counts(pred[None], truth[None])[0]
  summary = {"input": reader.path, "shape": list(reader.shape), **predictor.summary(),
             "probability_dtype": probability_dtype, **paths}
  if mask is not None:
    c = dict(zip(metrics.COUNTS, map(int, counts)))
    summary["pixel"] = {**c, **metrics.scores_from_counts(c)}
  return summary


def segment_file(config: Any, workdir: str, input_path: str, output_dir: str, mask_path: str | None = None,
                 probability_dtype: str = "float16", progress: bool = True,
                 voxel_size_nm: tuple[float, ...] | None = None) -> dict[str, Any]:
  """Segments the TIFF `input_path` with `workdir`'s predictor (`Predictor.load`) into `output_dir`.

  Writes probabilities.tif, segmentation.tif and summary.json there (scores too, given `mask_path`). The
  input's voxel size is `voxel_size_nm` when given, else its TIFF resolution / ImageJ spacing; at another
  than the model's it is resampled (`Predictor.on_input`, printed and kept in the summary).
  """
  outputs.check_not_inputs([os.path.join(output_dir, f) for f in OUTPUT_FILES], [input_path, mask_path])
  with contextlib.ExitStack() as stack:
    reader = stack.enter_context(StackReader(input_path))
    mask = stack.enter_context(ngff.open_volume(mask_path)) if mask_path else None  # TIFF or OME-Zarr
    outputs.check_writable(output_dir, "output folder")
    predictor = Predictor.load(config, workdir).on_input(
        *magnification.input_voxel_size(voxel_size_nm, reader.voxel_size_nm, reader.voxel_source))
    if progress:
      print(f"voxel size: {predictor.resampling.note}")
    summary = segment_stack(predictor, reader, output_dir, mask, probability_dtype, progress)
  summary = {"workdir": workdir, "checkpoint": config.eval.checkpoint, "notes": reader.notes, **summary}
  outputs.write_json(os.path.join(output_dir, OUTPUT_FILES[2]), summary)
  return summary
