"""Orbax checkpoints in a workdir: the latest N under `checkpoints/`, the best by validation Dice under `best/`.

A checkpoint holds the train state {'params', 'batch_stats', 'opt_state', 'step'}. Tools that only
run the network (segmentation, evaluation, explanation, export) restore the model variables alone
with `restore_variables`, a partial restore that needs neither the optimiser nor the trainer.

Damaged checkpoints (a data file cut short by a full disk or an interrupted copy) are found before
orbax reads them: every save records the size and CRC-32 of each of the step's files (`MANIFEST`,
in the step's folder), checked at every restore. A step saved without the record (by an older
version, or killed between the two writes) is restored as it is; if that fails while the shapes its
metadata records are the model's, the failure is the files', else the model does not fit. Resuming
sets a damaged step aside under `workdir/damaged/` and goes on from the newest intact checkpoint
(`Checkpoints.restore_latest`), so training never continues from garbage; tools that only run the
network name the step and stop.
"""

import collections
import contextlib
import json
import logging
import os
import zlib
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from unet_jax.errors import InputError
from unet_jax.io import outputs

MANIFEST = "unet_jax_files.json"  # {'files': {path in the step folder: [bytes, CRC-32]}}, written after each save
STORES = {"latest": "checkpoints", "best": "best"}  # store -> folder in the workdir
DAMAGED = "damaged"  # folder in the workdir where damaged checkpoints are set aside


def _manager(directory: str, keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      best_fn=(lambda m: m["val_dice"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _mismatch(step: int, workdir: str, error: Exception) -> InputError:
  """The one-line error for a checkpoint whose shapes differ from the configured model's."""
  return InputError(f"checkpoint step {step} in {workdir!r} does not fit the configured model "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); use the model.* settings "
                    "it was trained with, or another --workdir")


class _Damaged(Exception):
  """A checkpoint step whose files cannot be read; `path` is its folder in the workdir (checkpoints/20),
  `reason` what is wrong, on one line."""

  def __init__(self, step: int, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.step, self.path, self.reason = step, path, reason


def _shapes(tree: Any) -> collections.Counter:
  """How many leaves of each shape `tree` has (arrays, shape structs or orbax's array metadata): comparable
  whatever names orbax's metadata gives the leaves."""
  return collections.Counter(tuple(getattr(leaf, "shape", np.shape(leaf))) for leaf in jax.tree.leaves(tree))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """orbax's warnings silenced (reading a damaged checkpoint's metadata warns about every missing file)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _saved_shapes(step_dir: str) -> collections.Counter | None:
  """The shapes a checkpoint step records in its metadata, or None when the metadata cannot be read."""
  try:
    with _quiet():
      metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "default"))
  except Exception:  # pylint: disable=broad-except  (any reader error means: unreadable)
    return None
  metadata = getattr(metadata, "item_metadata", metadata)
  shapes = _shapes(getattr(metadata, "tree", metadata))
  return shapes or None  # orbax reads a cut-short _METADATA as an empty tree


def _one_line_reason(error: BaseException) -> str:
  """The innermost error of the chain (the reader's own, e.g. tensorstore's OUT_OF_RANGE), on one short line."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split()) or type(error).__name__
  return text[:160] + ("..." if len(text) > 160 else "")


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def _step_files(step_dir: str) -> dict[str, list[int]]:
  """{path relative to `step_dir`: [bytes, CRC-32]} of every file of a checkpoint step but the manifest."""
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if not relative.startswith(MANIFEST):
        files[relative] = [os.path.getsize(path), _crc32(path)]
  return files


def _write_manifest(manager: ocp.CheckpointManager, step: int) -> None:
  """Records the files of the just saved `step` (process 0; orbax's save returns once every file is written)."""
  if jax.process_index() == 0:
    step_dir = os.path.join(str(manager.directory), str(step))
    outputs.write_json(os.path.join(step_dir, MANIFEST), {"files": _step_files(step_dir)})


def _check_files(step_dir: str) -> str | None:
  """What differs between a step's files and the record made when it was saved; None when nothing
  does, or when there is no readable record."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      record = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  for relative, (size, crc) in sorted(record.items()):
    path = os.path.join(step_dir, relative)
    if not os.path.isfile(path):
      return f"{relative} is missing"
    found = os.path.getsize(path)
    if found != size:
      return f"{relative} is {found:,} bytes, {size:,} were saved{' (cut short)' if found < size else ''}"
    if _crc32(path) != crc:
      return f"{relative} is not what was saved (its CRC-32 differs)"
  return None


def _restore_step(manager: ocp.CheckpointManager, step: int, args: Any, target: Any, workdir: str,
                  partial: bool) -> Any:
  """`manager`'s checkpoint `step` restored with `args`; `_Damaged` when its files are not as saved or
  cannot be read, the one-line mismatch error when it does not fit `target` (all of it, or with
  `partial` the part asked for)."""
  step_dir = os.path.join(str(manager.directory), str(step))
  where = os.path.join(os.path.basename(os.path.normpath(str(manager.directory))), str(step))  # e.g. checkpoints/20
  problem = _check_files(step_dir)
  if problem:
    raise _Damaged(step, where, problem)
  try:
    return manager.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many types)
    saved, wanted = _saved_shapes(step_dir), _shapes(target)
    fits = saved is not None and (not wanted - saved if partial else saved == wanted)
    if saved is not None and not fits:
      raise _mismatch(step, workdir, e) from e
    raise _Damaged(step, where, _one_line_reason(e)) from e


class Checkpoints:
  """Saves and restores train-state pytrees {'params', 'batch_stats', 'opt_state', 'step'}."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = workdir
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, best=False)
    self.best = _manager(os.path.join(workdir, "best"), 1, best=True)

  def save(self, step: int, state: Any, val_dice: float | None = None) -> None:
    """Saves `state` as the latest; also as the best when `val_dice` beats the best so far.

    The best is offered first: a run killed between the two saves resumes from the previous latest
    step, comes back to this step and saves it as the latest, so no evaluation is lost from the
    best selection (an evaluation already offered is not offered twice).
    """
    if val_dice is not None and step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.StandardSave(state), metrics={"val_dice": float(val_dice)})
      if step in self.best.all_steps():  # not when a better one is kept
        _write_manifest(self.best, step)
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))
      _write_manifest(self.latest, step)

  def restore_latest(self, target: Any) -> Any | None:
    """The newest intact saved state shaped like `target`, from the latest or the best store; None when there is none.

    A damaged checkpoint (its files cannot be read) is set aside under workdir/damaged/ with a note
    naming its step, and the next newest is tried, so training resumes from intact weights only. A
    state taken from the best store that is newer than every intact latest one is saved as the latest too.
    """
    candidates = sorted([(s, 1, "latest") for s in self.latest.all_steps()] +
                        [(s, 0, "best") for s in self.best.all_steps()], reverse=True)
    damaged = []
    for step, _, store in candidates:
      manager = self.latest if store == "latest" else self.best
      try:
        tree = _restore_step(manager, step, ocp.args.StandardRestore(target), target, self.directory, partial=False)
      except _Damaged as e:
        moved = self._set_aside(store, step)
        damaged.append(step)
        _note(f"checkpoint step {step} in {self.directory!r} is damaged ({e}); moved to {moved}")
        continue
      if damaged:
        _note(f"resuming from step {step}, the newest intact checkpoint ({STORES[store]}/{step}), instead of "
              f"damaged step {damaged[0]}")
      if store == "best" and (self.latest.latest_step() or -1) < step:
        self.latest.save(step, args=ocp.args.StandardSave(tree))
        _write_manifest(self.latest, step)
      return tree
    if damaged:
      raise InputError(f"every checkpoint in {self.directory!r} is damaged (steps {damaged}; moved to "
                       f"{os.path.join(self.directory, DAMAGED)}); rerun to train again from step 0, or put back "
                       "intact copies from a backup")
    return None

  def _set_aside(self, store: str, step: int) -> str:
    """Moves checkpoint `step` of `store` to workdir/damaged/<folder>-<step>; returns where it went."""
    source = os.path.join(self.directory, STORES[store], str(step))
    target = os.path.join(self.directory, DAMAGED, f"{STORES[store]}-{step}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      base, n = target, 1
      while os.path.exists(target):
        target, n = f"{base}.{n}", n + 1
      os.rename(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {store} {step} set aside")
    (self.latest if store == "latest" else self.best).reload()
    return target

  def close(self) -> None:
    self.latest.close()
    self.best.close()


class _ReadOnlyNotes(logging.Filter):
  """Drops orbax's warnings that a read-only manager is read only (and so neither saves nor creates):
  restoring is all such a manager is for, so the notes only clutter evaluate/explain/export output."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("read_only=True" in message or "directory is read only" in message)


logging.getLogger("absl").addFilter(_ReadOnlyNotes())


def _note(text: str) -> None:
  if jax.process_index() == 0:
    print(f"note: {text}", flush=True)


def _read_only(workdir: str, which: str) -> ocp.CheckpointManager:
  """A read-only manager of `workdir`'s 'best' or 'latest' (checkpoints/) directory."""
  if which not in ("best", "latest"):
    raise InputError(f"checkpoint must be 'best' or 'latest', got {which!r}")
  directory = os.path.join(workdir, "best" if which == "best" else "checkpoints")
  if not os.path.isdir(directory):
    raise InputError(f"no {which} checkpoint in {workdir!r}; train first with train.py --workdir={workdir}")
  return ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True))


def saved_steps(workdir: str) -> list[int]:
  """The steps of the kept checkpoints under `workdir/checkpoints`, ascending."""
  manager = _read_only(workdir, "latest")
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def _damaged_error(e: _Damaged, workdir: str, which: str) -> InputError:
  """The one-line error of a tool that only runs the network, given a damaged checkpoint."""
  if which == "best":
    todo = ("use the latest checkpoint instead (--config.eval.checkpoint=latest), or train again in another "
            "--workdir")
  else:
    todo = (f"rerun train.py with the same --config and --workdir={workdir}: it sets the damaged step aside and "
            "trains on from the newest intact checkpoint (or use --config.eval.checkpoint=best)")
  return InputError(f"checkpoint step {e.step} in {workdir!r} is damaged, its files cannot be read ({e}); {todo}")


def _restore(workdir: str, which: str, step: int | None, args_for: Any, target: Any,
             partial: bool) -> tuple[Any, int]:
  """Restores with `args_for` the chosen checkpoint of `workdir` (checked against `target`); returns (tree, step)."""
  store = "latest" if step is not None else which
  manager = _read_only(workdir, store)
  try:
    if step is None:
      step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      step = manager.latest_step()
    if step is None or step not in manager.all_steps():
      raise InputError(f"no {which if step is None else f'step {step}'} checkpoint in {workdir!r}; "
                       f"train first with train.py --workdir={workdir}")
    try:
      tree = _restore_step(manager, step, args_for, target, workdir, partial)
    except _Damaged as e:
      raise _damaged_error(e, workdir, store) from None
  finally:
    manager.close()
  return tree, step


def restore(workdir: str, target: Any, which: str = "best", step: int | None = None) -> tuple[Any, int]:
  """Restores the 'best' (or 'latest', or with `step` that step's) checkpoint of `workdir`; returns (state, step)."""
  return _restore(workdir, which, step, ocp.args.StandardRestore(target), target, partial=False)


def restore_variables(workdir: str, target: dict[str, Any], which: str = "best",
                      step: int | None = None) -> tuple[dict[str, Any], int]:
  """Model variables {'params', 'batch_stats'} shaped like `target` (e.g. `model.abstract_variables`).

  Reads only those two items of the saved train state, so it needs no optimiser settings.
  """
  target = {"params": target["params"], "batch_stats": target.get("batch_stats", {})}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  tree, step = _restore(workdir, which, step, args, target, partial=True)
  variables = {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
  saved = {path: leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:  # a partial restore does not compare shapes
    if saved.get(path) != leaf.shape:
      raise InputError(f"checkpoint step {step} in {workdir!r} does not fit the configured model "
                       f"({jax.tree_util.keystr(path)}: saved {saved.get(path)}, model {leaf.shape}); use the "
                       "model.* settings it was trained with (a 3D checkpoint needs a 3D config, and vice versa)")
  return variables, step
