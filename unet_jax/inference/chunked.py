"""Chunked, resumable segmentation of OME-Zarr volumes larger than memory, with instance labels.

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --input=vol.ome.zarr --output_dir=out/

writes out/segmentation.ome.zarr: an NGFF image of the probabilities (`--probabilities` dtype) with two
NGFF label images, labels/mask (u8, 1 = mitochondrion: the stored probabilities >= the predictor's threshold, as
for TIFFs) and labels/instances (u32 connected components, 0 background), all with the input's axes
and voxel size; and out/summary.json.

Blocks of `eval.chunk` voxels are computed one at a time on the global window grid (unet_jax/inference/tiling.py),
so memory stays flat in the volume size and the result equals in-memory segmentation. Instances are
labelled in three passes: each block's mask labelled alone (scipy.ndimage.label), the labels that meet
across block faces joined (scipy.sparse.csgraph.connected_components over those pairs), then every
block relabelled, numbering objects 1..N by their first block; this equals ndimage.label of the whole
mask up to the numbering.

Everything is built in out/segmentation.ome.zarr.partial, renamed when complete; each finished block
is recorded (a small file written after its data) there, so a rerun of the same command after an
interruption skips finished blocks. A run with other inputs or settings starts that folder afresh.
"""

import json
import os
import shutil
from typing import Any

import numpy as np
import tqdm
import zarr
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from unet_jax.errors import InputError
from unet_jax.inference import segment, tiling
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, ngff, outputs
from unet_jax.scores import metrics

OUTPUT = "segmentation.ome.zarr"
SUMMARY = "summary.json"
LABELS = ("mask", "instances")
_LOCAL = "block_labels"  # per-block labels (work folder only)
_PROGRESS = "progress"


def storage_chunks(block: tuple[int, ...], target: tuple[int, ...] = (16, 256, 256)) -> tuple[int, ...]:
  """Zarr chunks that tile a block exactly (the largest divisor of each side up to `target`), so blocks
  never share a chunk and an interrupted block cannot damage a finished one."""
  return tuple(max(d for d in range(1, min(b, t) + 1) if b % d == 0) for b, t in zip(block, target))


def _marker(work: str, stage: str, block: tiling.Block) -> str:
  return os.path.join(work, _PROGRESS, f"{stage}-{'-'.join(map(str, block.index))}.json")


def _done(work: str, stage: str, block: tiling.Block) -> dict[str, Any] | None:
  path = _marker(work, stage, block)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _start(work: str, run: dict[str, Any], shape: tuple[int, ...], block: tuple[int, ...], axes: tuple[str, ...],
           voxel_size_nm: tuple[float, ...], probability_dtype: str) -> bool:
  """Opens the work folder for `run`; True when resuming the same run, else it is created afresh."""
  record = os.path.join(work, "run.json")
  if os.path.isfile(record):
    with open(record) as f:
      if json.load(f) == json.loads(json.dumps(run)):
        return True
  shutil.rmtree(work, ignore_errors=True)
  chunks = storage_chunks(block)[-len(shape):]
  group = zarr.open_group(work, mode="w", zarr_format=ngff.FORMAT.zarr_format)
  ngff.create_image(group, shape, probability_dtype, chunks, voxel_size_nm, axes)
  ngff.create_labels(group, LABELS[0], shape, np.uint8, chunks, voxel_size_nm, axes)
  ngff.create_labels(group, LABELS[1], shape, np.uint32, chunks, voxel_size_nm, axes)
  zarr.open_array(os.path.join(work, _LOCAL), mode="w", shape=shape, chunks=chunks, dtype=np.uint32,
                  zarr_format=ngff.FORMAT.zarr_format)
  os.makedirs(os.path.join(work, _PROGRESS))
  outputs.write_json(record, run)
  return False


def _join_faces(local: zarr.Array, tiles: tiling.Tiling, offsets: dict[tuple[int, ...], int],
                to_array: Any) -> np.ndarray:
  """Pairs i64[E, 2] of global provisional labels that touch across a block face (face connectivity)."""
  by_index = {b.index: b for b in tiles.blocks}
  pairs = [np.zeros((0, 2), np.int64)]
  for block in tiles.blocks:
    for axis in range(3):
      if block.box[axis].start == 0:
        continue
      before = by_index[tuple(i - (a == axis) for a, i in enumerate(block.index))]
      plane = lambda b, z: to_array(tuple(slice(z, z + 1) if a == axis else s for a, s in enumerate(b.box)))
      mine = local[plane(block, block.box[axis].start)].astype(np.int64)
      theirs = local[plane(before, block.box[axis].start - 1)].astype(np.int64)
      touching = (mine > 0) & (theirs > 0)
      face = np.stack([mine[touching] + offsets[block.index], theirs[touching] + offsets[before.index]], -1)
      pairs.append(np.unique(face, axis=0))  # per face: memory of one face, not of every face's voxels
  return np.unique(np.concatenate(pairs), axis=0)


def _number_instances(work: str, tiles: tiling.Tiling, counts: np.ndarray, drop: int, progress: bool) -> int:
  """Writes labels/instances from the per-block labels: faces joined, objects numbered 1..N; returns N.

  `counts` are the blocks' numbers of objects; `drop` = 1 for 2D images (arrays (y, x), boxes (z, y, x)).
  """
  to_array = lambda box: box[drop:]
  local = zarr.open_array(os.path.join(work, _LOCAL), mode="r")
  instances = zarr.open_array(os.path.join(work, "labels", LABELS[1], ngff.DATASET), mode="r+")
  offsets = dict(zip((b.index for b in tiles.blocks), np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()))
  pairs = _join_faces(local, tiles, offsets, to_array)
  n = int(counts.sum()) + 1
  graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
  _, lut = csgraph.connected_components(graph, directed=False)  # node 0 (background) alone: component 0
  for b in tqdm.tqdm(tiles.blocks, unit="chunk", desc="instances", disable=not progress):
    if _done(work, "instances", b) is None:
      provisional = local[to_array(b.box)].astype(np.int64)
      instances[to_array(b.box)] = np.where(provisional > 0, lut[provisional + offsets[b.index]], 0).astype(np.uint32)
      outputs.write_json(_marker(work, "instances", b), {})
  return int(lut.max())


def segment_volume(predictor: Predictor, stack: ngff.ZarrStack, output_dir: str, chunk: tuple[int, ...],
                   mask: ngff.ZarrStack | None = None, probability_dtype: str = "float16", progress: bool = True,
                   run: dict[str, Any] | None = None) -> dict[str, Any]:
  """Segments `stack` in blocks of `chunk` voxels into output_dir/segmentation.ome.zarr (module docstring).

  `run` (JSON) identifies the run for resuming: a work folder holding another `run` is started afresh.
  """
  if probability_dtype not in segment.PROBABILITY_DTYPES:
    raise InputError(f"probability dtype must be one of {segment.PROBABILITY_DTYPES}, got {probability_dtype!r}")
  if mask is not None and mask.shape != stack.shape:
    raise InputError(f"mask shape {mask.shape} != image shape {stack.shape}; they must match voxel for voxel")
  tiles = predictor.plan(stack.shape, tuple(chunk))
  final = os.path.join(output_dir, OUTPUT)
  work = final + ".partial"
  outputs.check_writable(output_dir, "output folder")
  drop = int(len(stack.axes) == 2)  # a 2D image: arrays (y, x), blocks (1, dy, dx)
  block = tuple(min(c, s) for c, s in zip(chunk, stack.shape))
  run = {**(run or {}), "shape": list(stack.shape), "chunk": list(block), "probability_dtype": probability_dtype,
         **predictor.summary()}
  resumed = _start(work, run, stack.shape[drop:], block, stack.axes, stack.voxel_size_nm, probability_dtype)
  outs = [zarr.open_array(os.path.join(work, p), mode="r+")
          for p in (ngff.DATASET, f"labels/{LABELS[0]}/{ngff.DATASET}", _LOCAL)]
  todo = [b for b in tiles.blocks if _done(work, "block", b) is None]
  if resumed and progress:
    print(f"note: resuming {work}: {len(tiles.blocks) - len(todo)} of {len(tiles.blocks)} chunks already done")
  for b in tqdm.tqdm(todo, unit="chunk", desc="segment", disable=not progress):
    prob = predictor.block_probabilities(stack.read, tiles, b)
    stored = segment.stored_probabilities(predictor.calibrate(prob), probability_dtype)
    pred = predictor.segment(segment.stored_as_float(stored))
    labels, count = ndimage.label(pred)
    record = {"objects": int(count)}
    if mask is not None:
      truth = data.binarize_mask(mask.raw(b.box), f"mask chunk {b.index}")
      record["counts"] = metrics.slice_counts(pred[None], truth[None])[0].tolist()
    for out, values in zip(outs, (stored, pred.astype(np.uint8), labels)):
      out[b.box[drop:]] = values[0] if drop else values
    outputs.write_json(_marker(work, "block", b), record)  # after the data: a recorded block is complete
  records = [_done(work, "block", b) for b in tiles.blocks]
  instances = _number_instances(work, tiles, np.array([r["objects"] for r in records], np.int64), drop, progress)
  for name in (_LOCAL, _PROGRESS):
    shutil.rmtree(os.path.join(work, name))
  os.remove(os.path.join(work, "run.json"))
  shutil.rmtree(final, ignore_errors=True)
  os.replace(work, final)
  summary = {"input": stack.path, "shape": list(stack.shape), "axes": list(stack.axes),
             "voxel_size_nm": list(stack.voxel_size_nm), **run, "output": final, "chunks": len(tiles.blocks),
             "instances": instances, "labels": [f"{final}/labels/{name}" for name in LABELS]}
  if mask is not None:
    c = dict(zip(metrics.COUNTS, map(int, np.sum([r["counts"] for r in records], 0))))
    summary["pixel"] = {**c, **metrics.scores_from_counts(c)}
  return summary


def check_paths(input_path: str, mask_path: str | None, output_dir: str) -> None:
  """Raises InputError when an output would replace or fall inside an input (a zarr store is a folder)."""
  final = os.path.join(output_dir, OUTPUT)
  outputs.check_not_inputs([final, final + ".partial", os.path.join(output_dir, SUMMARY)], [input_path, mask_path])
  for path in (input_path, mask_path):
    if path and os.path.commonpath([os.path.realpath(path), os.path.realpath(final)]) == os.path.realpath(path):
      raise InputError(f"--output_dir {output_dir} lies inside the input {path}; choose a folder outside it")


def segment_file(config: Any, workdir: str, input_path: str, output_dir: str, mask_path: str | None = None,
                 probability_dtype: str = "float16", progress: bool = True) -> dict[str, Any]:
  """Segments the OME-Zarr `input_path` with `workdir`'s predictor (`Predictor.load`) into `output_dir` (see the module doc)."""
  check_paths(input_path, mask_path, output_dir)
  stack = ngff.ZarrStack(input_path)
  mask = ngff.ZarrStack(mask_path) if mask_path else None
  if mask is not None:
    data.binarize_mask(mask.unique_values(), f"mask {mask_path}")
  outputs.check_writable(output_dir, "output folder")
  predictor = Predictor.load(config, workdir)
  run = {"workdir": os.path.realpath(workdir), "checkpoint": config.eval.checkpoint,
         "input": os.path.realpath(input_path), "mask": mask_path and os.path.realpath(mask_path)}
  summary = segment_volume(predictor, stack, output_dir, tuple(config.eval.chunk), mask, probability_dtype,
                           progress, run)
  summary = {"notes": stack.notes, **summary}
  outputs.write_json(os.path.join(output_dir, SUMMARY), summary)
  return summary
