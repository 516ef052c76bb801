"""Chunked, resumable segmentation of OME-Zarr volumes larger than memory, on one machine or a Dask cluster.

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --input=vol.ome.zarr --output_dir=out/ \
      [--scheduler=local|synchronous|tcp://host:8786]

writes out/segmentation.ome.zarr: an NGFF image of the probabilities (`--probabilities` dtype) with two
NGFF label images, labels/mask (u8, 1 = mitochondrion: the stored probabilities >= the predictor's
threshold, as for TIFFs) and labels/instances (u32 connected components, 0 background), all with the
input's axes and voxel size; and out/summary.json. An input at another voxel size than the model's is
resampled to it block by block and back (`Predictor.on_input`, unet_jax/inference/magnification.py). Input
and output may be fsspec URLs (s3://bucket/..., gs://..., file://...; unet_jax/io/stores.py), read and
written chunk by chunk.

The work is four stages of Dask tasks (unet_jax/inference/cluster.py: the synchronous scheduler runs the
same tasks one after another in this process, a cluster spreads them over its workers):
1. blocks: each block of `eval.chunk` voxels predicted from the windows of the whole volume's grid that
   touch it (unet_jax/inference/tiling.py), so the result equals in-memory segmentation; its
   probabilities, mask and own labels (scipy.ndimage.label, 1..n within the block) written into storage
   chunks that no other block shares;
2. faces: per block, the pairs of its labels and its lower neighbours' that touch across their faces;
3. (here) those pairs joined by scipy.sparse.csgraph.connected_components, which numbers the objects
   1..N by their first block;
4. instances: each block's labels renumbered into labels/instances.
This equals ndimage.label of the whole mask up to the numbering.

A K-class model (model.num_classes > 1) writes instead the K class probabilities as the image, with a channel
axis first (c, z, y, x; channel k = class k, `--probabilities` dtype), and one NGFF label image, labels/classes
(u8 class ids 0..K-1: `Predictor.label_map` of each block's calibrated float32 probabilities, so it equals the
label map of the whole volume in memory). Its blocks are the only stage (no instances); with a ground-truth label map each
block adds its confusion matrix and the summary holds per-class scores.

Resume and faults. The image is built in out/segmentation.ome.zarr.partial and renamed over an earlier
output when complete (object stores cannot rename: there it is built in place, so an earlier output at
that URL is replaced when a fresh run starts). Its record, unet_jax_run.json, says which run it belongs
to: the input's and mask's fingerprints (shape, dtype, chunks, NGFF metadata, the chunk files' sizes and
modification stamps, the bytes of a few: `stores.image_fingerprint`), the predictor's summary and
checkpoint step, a digest of its variables, the chunk and dtype. Each finished task records itself after
its data (out/segmentation.ome.zarr.work/progress/STAGE-i-j-k.json). A rerun with the same record
computes only what is not recorded (counted and printed); any other record starts afresh with a note
saying what changed. Every step is safe to repeat: a task's writes are whole storage chunks of its own
block (atomic on local disk and in object stores), computed the same way on every attempt, so a task
rerun after its worker died, or run twice, writes the same data; the stages after the blocks and the
finalisation (record marked complete, rename, work folder removed) each find what the step before left,
whatever moment a kill came at (tests/test_blockwise.py kills the run at each of `FAULT_POINTS`).
"""

import dataclasses
import functools
import hashlib
import os
import signal
from typing import Any

import dask
import jax
import numpy as np
import zarr
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from unet_jax.errors import InputError
from unet_jax.inference import cluster, magnification, segment, tiling
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, ngff, stacks, stores
from unet_jax.scores import classes, metrics

OUTPUT = "segmentation.ome.zarr"
SUMMARY = "summary.json"
LABELS = ("mask", "instances")
CLASS_LABELS = ("classes",)  # a K-class model's label image
RECORD = "unet_jax_run.json"  # in the image: the run it belongs to, and whether it is complete
PARTIAL, WORK = OUTPUT + ".partial", OUTPUT + ".work"
_LOCAL = "block_labels"  # per-block labels (work folder only)
_PROGRESS = "progress"
FAULT_POINTS = ("created", "block", "blocks", "faces", "instance", "instances", "complete", "replace", "renamed",
                "cleanup", "finished")  # where `_fault` may stop a run, in order (tests)


def _fault(point: str) -> None:
  """Test hook: UNET_JAX_FAULT=POINT:FLAG_FILE kills this process (SIGKILL) the first time any process reaches
  POINT; creating FLAG_FILE makes it once. Tests in one process replace this function instead."""
  name, _, flag = os.environ.get("UNET_JAX_FAULT", "").partition(":")
  if name != point or not flag:
    return
  try:
    os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return
  os.kill(os.getpid(), signal.SIGKILL)


def storage_chunks(block: tuple[int, ...], target: tuple[int, ...] = (16, 256, 256)) -> tuple[int, ...]:
  """Zarr chunks that tile a block exactly (the largest divisor of each side up to `target`), so blocks
  never share a chunk and an interrupted block cannot damage a finished one."""
  return tuple(max(d for d in range(1, min(b, t) + 1) if b % d == 0) for b, t in zip(block, target))


@dataclasses.dataclass(frozen=True)
class _Job:
  """What every task needs: where the image and the work folder are, the input, the tiling, the predictor's name."""
  image: str  # the image being built (a path or URL)
  work: str  # the work folder
  stack: ngff.ZarrStack  # pickled to workers: its normalisation comes along, not computed again
  mask: tuple[str, str] | None  # the mask's path and version, opened once by each process that reads it
  tiles: tiling.Tiling  # without its blocks (each task gets its own)
  drop: int  # 1 for 2D images: arrays (y, x), boxes (z, y, x)
  probability_dtype: str
  predictor: str  # its name for cluster.shared

  def array(self, path: str, mode: str = "r+") -> zarr.Array:
    root, _, name = path.partition(":")
    return zarr.open_array(store=stores.zarr_store(self.image if root == "image" else self.work), path=name, mode=mode)

  def box(self, block: tiling.Block) -> tuple[slice, ...]:
    return block.box[self.drop:]


_PROBABILITIES, _MASK = f"image:{ngff.DATASET}", f"image:labels/{LABELS[0]}/{ngff.DATASET}"
_INSTANCES, _BLOCK_LABELS = f"image:labels/{LABELS[1]}/{ngff.DATASET}", f"work:{_LOCAL}"
_CLASSES = f"image:labels/{CLASS_LABELS[0]}/{ngff.DATASET}"


def _marker(stage: str, index: tuple[int, ...]) -> str:
  return f"{stage}-{'-'.join(map(str, index))}.json"


def _finished(work: stores.Folder, stage: str) -> set[tuple[int, ...]]:
  """The block indices recorded for `stage` in the work folder."""
  found = set()
  for name in work.names(_PROGRESS):
    parts = name.removesuffix(".json").split("-")
    if name.endswith(".json") and parts[0] == stage and len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
      found.add(tuple(map(int, parts[1:])))
  return found


@functools.lru_cache(maxsize=4)
def _mask_reader(path: str, version: str) -> Any:
  """The mask at `path` opened once per process and `version` (its fingerprint's digest)."""
  del version
  return ngff.open_volume(path)


def _segment_block(block: tiling.Block, job: _Job) -> dict[str, Any]:
  """Task: one block's probabilities, mask and own labels written, then its record {'objects', ['counts']}
  (a K-class model's: `_classify_block`)."""
  predictor = cluster.shared(job.predictor)
  k = predictor.num_classes
  with dask.config.set(scheduler=cluster.SYNCHRONOUS):  # the input's reads, inside a worker too
    prob = predictor.block_probabilities(job.stack.read, job.tiles, block)
    truth = None
    if job.mask:
      raw, name = _mask_reader(*job.mask).raw(block.box), f"mask chunk {block.index}"
      truth = data.binarize_mask(raw, name) if k == 1 else data.check_labels(raw, k, name)
  if k > 1:
    return _classify_block(block, job, predictor, prob, truth)
  stored = segment.stored_probabilities(predictor.calibrate(prob), job.probability_dtype)
  pred = predictor.segment(segment.stored_as_float(stored))
  labels, count = ndimage.label(pred)
  record = {"objects": int(count)}
  if truth is not None:
    record["counts"] = metrics.slice_counts(pred[None], truth[None])[0].tolist()
  flat = (lambda v: v[0]) if job.drop else (lambda v: v)
  job.array(_PROBABILITIES)[job.box(block)] = flat(stored)
  _fault("block")
  job.array(_MASK)[job.box(block)] = flat(pred.astype(np.uint8))
  job.array(_BLOCK_LABELS)[job.box(block)] = flat(labels.astype(np.uint32))
  stores.Folder(job.work).write_json(record, _PROGRESS, _marker("block", block.index))  # after the data
  return record


def _classify_block(block: tiling.Block, job: _Job, predictor: Predictor, prob: np.ndarray,
                    truth: np.ndarray | None) -> dict[str, Any]:
  """One block of a K-class model: its raw probabilities f32[*block, K] calibrated and written with their class
  map, then its record {['confusion']}."""
  prob = predictor.calibrate(prob)
  labels = predictor.label_map(prob)
  record = {}
  if truth is not None:
    record["confusion"] = classes.confusion_matrix(labels, truth, predictor.num_classes).tolist()
  stored = np.moveaxis(segment.stored_probabilities(prob, job.probability_dtype), -1, 0)  # (K, *block)
  job.array(_PROBABILITIES)[(slice(None), *job.box(block))] = stored[:, 0] if job.drop else stored
  _fault("block")
  job.array(_CLASSES)[job.box(block)] = labels[0] if job.drop else labels
  stores.Folder(job.work).write_json(record, _PROGRESS, _marker("block", block.index))  # after the data
  return record


def _face_pairs(item: tuple[tiling.Block, tuple[tuple[int, tiling.Block], ...]], job: _Job) -> list[list[int]]:
  """Task: [[axis, mine, theirs], ...], the distinct pairs of a block's labels and its lower neighbour's along
  `axis` that touch across their face (face connectivity); recorded."""
  block, neighbours = item
  local = job.array(_BLOCK_LABELS, "r")
  pairs = []
  for axis, before in neighbours:
    at = block.box[axis].start
    plane = lambda b, z: tuple(slice(z, z + 1) if a == axis else s for a, s in enumerate(b.box))[job.drop:]
    mine, theirs = local[plane(block, at)], local[plane(before, at - 1)]
    touching = (mine > 0) & (theirs > 0)
    for m, t in np.unique(np.stack([mine[touching], theirs[touching]], -1), axis=0).tolist():
      pairs.append([axis, int(m), int(t)])
  stores.Folder(job.work).write_json({"pairs": pairs}, _PROGRESS, _marker("faces", block.index))
  return pairs


def _number_block(item: tuple[tiling.Block, np.ndarray], job: _Job) -> None:
  """Task: a block's labels renumbered through `lut` (its label -> global number, lut[0] = 0) into
  labels/instances; recorded."""
  block, lut = item
  local = job.array(_BLOCK_LABELS, "r")[job.box(block)]
  job.array(_INSTANCES)[job.box(block)] = lut[local]
  _fault("instance")
  stores.Folder(job.work).write_json({}, _PROGRESS, _marker("instances", block.index))


def _neighbours(tiles: tiling.Tiling, block: tiling.Block) -> tuple[tuple[int, tiling.Block], ...]:
  """(axis, block before this one along axis) for each axis where there is one."""
  by_index = {b.index: b for b in tiles.blocks}
  return tuple((axis, by_index[tuple(i - (a == axis) for a, i in enumerate(block.index))])
               for axis in range(3) if block.box[axis].start > 0)


def _number_instances(tiles: tiling.Tiling, objects: dict[tuple[int, ...], int],
                      faces: dict[tuple[int, ...], list[list[int]]]) -> tuple[dict[tuple[int, ...], np.ndarray], int]:
  """Per block, its lookup table label -> global number (1..N by first block; 0 stays 0), and N."""
  order = [b.index for b in tiles.blocks]
  counts = np.array([objects[i] for i in order], np.int64)
  offsets = dict(zip(order, np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()))
  edges = [np.zeros((0, 2), np.int64)]
  for block in tiles.blocks:
    before = dict(_neighbours(tiles, block))
    pairs = np.array(faces.get(block.index) or np.zeros((0, 3)), np.int64).reshape(-1, 3)
    if len(pairs):
      theirs = np.array([offsets[before[a].index] for a in pairs[:, 0]], np.int64)
      edges.append(np.stack([pairs[:, 1] + offsets[block.index], pairs[:, 2] + theirs], -1))
  edges = np.concatenate(edges)
  n = int(counts.sum()) + 1
  graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
  _, lut = csgraph.connected_components(graph, directed=False)  # node 0 (background) alone: component 0
  tables = {i: np.concatenate([[0], lut[offsets[i] + 1:offsets[i] + objects[i] + 1]]).astype(np.uint32) for i in order}
  return tables, int(lut.max())


def _digest(tree: Any) -> str:
  """sha256 of the arrays of a pytree (a predictor's variables)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _fingerprint(path: str) -> dict[str, Any]:
  return stores.image_fingerprint(path) if stacks.is_zarr(path) else stores.file_fingerprint(path)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The names of the fields of two run records that differ (those of the fingerprints one level down)."""
  same = lambda a, b: stores.as_json(a) == stores.as_json(b)
  changed = []
  for key in sorted(set(old) | set(new)):
    if key == "fingerprint":
      changed += [f"{k} content" for k in sorted(set(old.get(key, {})) | set(new[key]))
                  if not same(old.get(key, {}).get(k), new[key].get(k))]
    elif not same(old.get(key), new.get(key)):
      changed.append(key)
  return changed


def _open(out: stores.Folder, image: str, run: dict[str, Any], create: Any, progress: bool) -> str:
  """Opens the image being built for `run`: 'resume' (same run, unfinished), 'finish' (same run, every stage
  done), 'done' (the output is this run's, complete) or 'fresh' (created afresh by `create`)."""
  record = out.read_json(image, RECORD)
  if record and stores.as_json(record.get("run")) == stores.as_json(run):
    return "finish" if record.get("complete") else "resume"
  final = out.read_json(OUTPUT, RECORD) if image != OUTPUT else None
  if final and final.get("complete") and stores.as_json(final.get("run")) == stores.as_json(run):
    return "done"
  if record and progress:
    print(f"note: the unfinished {out.join(image)} was begun for another run (changed: "
          f"{', '.join(_changes(record.get('run') or {}, run))}); starting afresh")
  out.remove(image, RECORD)  # first: without it nothing below is taken for this run's
  out.remove(WORK)
  out.remove(image)
  create()
  _fault("created")
  out.write_json({"run": run, "complete": False}, image, RECORD)
  return "fresh"


def _create(out: stores.Folder, image: str, shape: tuple[int, ...], chunks: tuple[int, ...], axes: tuple[str, ...],
            voxel_size_nm: tuple[float, ...], probability_dtype: str, num_classes: int = 1) -> None:
  """The empty image (probabilities, labels/mask, labels/instances) and the work folder's per-block labels; for
  a K-class model the K-channel probabilities and labels/classes."""
  group = zarr.open_group(out.zarr_store(image), mode="w", zarr_format=ngff.FORMAT.zarr_format)
  if num_classes > 1:
    ngff.create_image(group, shape, probability_dtype, chunks, voxel_size_nm, axes, channels=num_classes)
    ngff.create_labels(group, CLASS_LABELS[0], shape, np.uint8, chunks, voxel_size_nm, axes)
    return
  ngff.create_image(group, shape, probability_dtype, chunks, voxel_size_nm, axes)
  ngff.create_labels(group, LABELS[0], shape, np.uint8, chunks, voxel_size_nm, axes)
  ngff.create_labels(group, LABELS[1], shape, np.uint32, chunks, voxel_size_nm, axes)
  zarr.open_array(store=out.zarr_store(WORK, _LOCAL), mode="w", shape=shape, chunks=chunks, dtype=np.uint32,
                  zarr_format=ngff.FORMAT.zarr_format)


def _run_stages(runner: cluster.Runner, job: _Job, tiles: tiling.Tiling, predictor: Predictor, resumed: bool,
                progress: bool) -> dict[str, Any]:
  """Blocks, faces, numbering and instances, each only where not recorded; the image's final record fields."""
  work = stores.Folder(job.work)
  done = _finished(work, "block")
  todo = [b for b in tiles.blocks if b.index not in done]
  if progress and resumed:
    print(f"note: resuming {job.image}: {len(tiles.blocks) - len(todo)} of {len(tiles.blocks)} chunks already "
          f"done, {len(todo)} to compute")
  if todo:
    runner.share(job.predictor, dataclasses.replace(predictor, variables=jax.device_get(predictor.variables)))
  records = dict(zip((b.index for b in todo), runner.map(_segment_block, todo, job, desc="segment")))
  records.update({i: work.read_json(_PROGRESS, _marker("block", i)) for i in done})
  computed = len(todo)
  _fault("blocks")
  if predictor.num_classes > 1:  # class maps: no instances to number
    final = {"instances": None, "blocks_computed": computed}
    if job.mask:
      final["confusion"] = np.sum([records[b.index]["confusion"] for b in tiles.blocks], 0).tolist()
    return final
  done = _finished(work, "faces")
  todo = [(b, _neighbours(tiles, b)) for b in tiles.blocks if b.index not in done and _neighbours(tiles, b)]
  faces = dict(zip((b.index for b, _ in todo), runner.map(_face_pairs, todo, job, desc="faces")))
  faces.update({i: work.read_json(_PROGRESS, _marker("faces", i))["pairs"] for i in done})
  _fault("faces")
  tables, instances = _number_instances(tiles, {i: r["objects"] for i, r in records.items()}, faces)
  done = _finished(work, "instances")
  todo = [(b, tables[b.index]) for b in tiles.blocks if b.index not in done]
  runner.map(_number_block, todo, job, desc="instances")
  _fault("instances")
  final = {"instances": instances, "blocks_computed": computed}
  if job.mask:
    final["counts"] = np.sum([records[b.index]["counts"] for b in tiles.blocks], 0).tolist()
  return final


def segment_volume(predictor: Predictor, stack: ngff.ZarrStack, output_dir: str, chunk: tuple[int, ...],
                   mask: Any = None, probability_dtype: str = "float16", progress: bool = True,
                   run: dict[str, Any] | None = None, scheduler: str = cluster.SYNCHRONOUS,
                   workers: int = 0) -> dict[str, Any]:
  """Segments `stack` in blocks of `chunk` voxels into output_dir/segmentation.ome.zarr (module docstring).

  `mask` (read by its `.path`) adds pixel scores; `run` (JSON) is added to what identifies the run for
  resuming; `scheduler` and `workers` choose where the tasks run (`cluster.connect`).
  """
  if probability_dtype not in segment.PROBABILITY_DTYPES:
    raise InputError(f"probability dtype must be one of {segment.PROBABILITY_DTYPES}, got {probability_dtype!r}")
  if mask is not None and tuple(mask.shape) != tuple(stack.shape):
    raise InputError(f"mask shape {mask.shape} != image shape {stack.shape}; they must match voxel for voxel")
  tiles = predictor.plan(stack.shape, tuple(chunk))
  out = stores.Folder(output_dir)
  out.check_writable("output folder")
  image = OUTPUT if out.remote else PARTIAL
  drop = int(len(stack.axes) == 2)  # a 2D image: arrays (y, x), blocks (1, dy, dx)
  block = tuple(min(c, s) for c, s in zip(chunk, stack.shape))
  settings = {**(run or {}), "shape": list(stack.shape), "chunk": list(block), "probability_dtype": probability_dtype,
              **predictor.summary()}
  identity = {**settings, "fingerprint": {"input": _fingerprint(stack.path),
                                          "mask": _fingerprint(mask.path) if mask is not None else None,
                                          "variables": _digest(predictor.variables)}}
  create = lambda: _create(out, image, stack.shape[drop:], storage_chunks(block)[-len(stack.shape[drop:]):],
                           stack.axes, stack.voxel_size_nm, probability_dtype, predictor.num_classes)
  state = _open(out, image, identity, create, progress)
  final_url = out.join(OUTPUT)
  if state == "done" and progress:
    print(f"note: {final_url} is already complete for this input, model and settings; nothing to compute")
  if state in ("fresh", "resume"):
    mask_version = stores.digest(identity["fingerprint"]["mask"])
    job = _Job(out.join(image), out.join(WORK), stack, (mask.path, mask_version) if mask is not None else None,
               dataclasses.replace(tiles, blocks=()), drop, probability_dtype,
               f"predictor-{identity['fingerprint']['variables'][:16]}")
    with cluster.connect(scheduler, workers, progress) as runner:
      result = _run_stages(runner, job, tiles, predictor, state == "resume", progress)
      where = runner.description
    out.write_json({"run": identity, "complete": True, **result, "scheduler": where}, image, RECORD)
    _fault("complete")
  record = out.read_json(OUTPUT if state == "done" else image, RECORD)
  if image != OUTPUT and state != "done":
    out.remove(OUTPUT)
    _fault("replace")
    out.rename(image, OUTPUT)
    _fault("renamed")
  if state != "done" or not out.exists(PARTIAL):  # the work folder is this run's (not another's, begun since)
    out.remove(WORK, _PROGRESS)
    _fault("cleanup")
    out.remove(WORK)
  label_names = LABELS if predictor.num_classes == 1 else CLASS_LABELS
  summary = {"input": stack.path, "shape": list(stack.shape), "axes": list(stack.axes),
             "voxel_size_nm": list(stack.voxel_size_nm), **settings, "output": final_url, "chunks": len(tiles.blocks),
             "instances": record["instances"], "labels": [f"{final_url}/labels/{name}" for name in label_names],
             "scheduler": record["scheduler"],
             "blocks_computed": record["blocks_computed"] if state in ("fresh", "resume") else 0}
  if mask is not None and predictor.num_classes > 1:
    summary["classes"] = {**classes.scores_from_confusion(np.array(record["confusion"])),
                          "confusion": record["confusion"]}
  elif mask is not None:
    c = dict(zip(metrics.COUNTS, map(int, record["counts"])))
    summary["pixel"] = {**c, **metrics.scores_from_counts(c)}
  _fault("finished")
  return summary


def _key(path: str) -> str:
  """A path or URL in one form for comparisons (local paths resolved)."""
  path = stores.normalize(path)
  return path if stores.is_remote(path) else os.path.realpath(path)


def check_paths(input_path: str, mask_path: str | None, output_dir: str) -> None:
  """Raises InputError when an output would replace or fall inside an input (a zarr store is a folder)."""
  out = stores.Folder(output_dir)
  inputs = [_key(p) for p in (input_path, mask_path) if p]
  for name in (OUTPUT, PARTIAL, WORK, SUMMARY):
    if _key(out.join(name)) in inputs:
      raise InputError(f"output {out.join(name)} would overwrite the input of the same name; choose another "
                       "--output_dir")
  final = _key(out.join(OUTPUT))
  for path, key in zip((p for p in (input_path, mask_path) if p), inputs):
    if final.startswith(key.rstrip("/") + "/"):
      raise InputError(f"--output_dir {output_dir} lies inside the input {path}; choose a folder outside it")


def segment_file(config: Any, workdir: str, input_path: str, output_dir: str, mask_path: str | None = None,
                 probability_dtype: str = "float16", progress: bool = True, scheduler: str = cluster.SYNCHRONOUS,
                 workers: int = 0, voxel_size_nm: tuple[float, ...] | None = None) -> dict[str, Any]:
  """Segments the OME-Zarr `input_path` with `workdir`'s predictor (`Predictor.load`) into `output_dir` (see the
  module doc); paths may be fsspec URLs. The input's voxel size is `voxel_size_nm` when given, else its NGFF
  scale; at another than the model's each block is resampled (`Predictor.on_input`)."""
  full = lambda p: stores.normalize(p) if stores.is_remote(p) else os.path.abspath(stores.normalize(p))
  input_path, output_dir = full(input_path), full(output_dir)  # absolute: workers may start elsewhere
  mask_path = full(mask_path) if mask_path else None
  check_paths(input_path, mask_path, output_dir)
  stack = ngff.ZarrStack(input_path)
  mask = ngff.open_volume(mask_path) if mask_path else None  # OME-Zarr or TIFF
  if mask is not None:
    k, values, name = config.model.num_classes, mask.unique_values(), f"mask {mask_path}"
    if k == 1:
      data.binarize_mask(values, name)
    else:
      data.check_labels(values, k, name)
  out = stores.Folder(output_dir)
  out.check_writable("output folder")
  predictor = Predictor.load(config, workdir).on_input(
      *magnification.input_voxel_size(voxel_size_nm, stack.voxel_size_nm, "OME-Zarr scale"))
  if progress:
    print(f"voxel size: {predictor.resampling.note}")
  run = {"workdir": _key(workdir), "checkpoint": config.eval.checkpoint, "input": _key(input_path),
         "mask": mask_path and _key(mask_path)}
  summary = segment_volume(predictor, stack, output_dir, tuple(config.eval.chunk), mask, probability_dtype,
                           progress, run, scheduler, workers)
  summary = {"notes": stack.notes, **summary}
  out.write_json(summary, SUMMARY)
  return summary
