"""Orbax checkpoints in a workdir: the latest N under `checkpoints/`, the best by validation Dice under `best/`.

A checkpoint holds the train state {'params', 'batch_stats', 'opt_state', 'step'}. Tools that only
run the network (segmentation, evaluation, explanation, export) restore the model variables alone
with `restore_variables`, a partial restore that needs neither the optimiser nor the trainer.
"""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from unet_jax.errors import InputError


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
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))

  def restore_latest(self, target: Any) -> Any | None:
    """The latest saved state shaped like `target`, or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    try:
      return self.latest.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
      raise _mismatch(step, self.directory, e) from e

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


def _restore(workdir: str, which: str, step: int | None, args_for: Any) -> tuple[Any, int]:
  """Restores with `args_for(manager)` the chosen checkpoint of `workdir`; returns (tree, step)."""
  manager = _read_only(workdir, "latest" if step is not None else which)
  try:
    if step is None:
      step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      step = manager.latest_step()
    if step is None or step not in manager.all_steps():
      raise InputError(f"no {which if step is None else f'step {step}'} checkpoint in {workdir!r}; "
                       f"train first with train.py --workdir={workdir}")
    try:
      tree = manager.restore(step, args=args_for)
    except (ValueError, KeyError, TypeError) as e:
      raise _mismatch(step, workdir, e) from e
  finally:
    manager.close()
  return tree, step


def restore(workdir: str, target: Any, which: str = "best", step: int | None = None) -> tuple[Any, int]:
  """Restores the 'best' (or 'latest', or with `step` that step's) checkpoint of `workdir`; returns (state, step)."""
  return _restore(workdir, which, step, ocp.args.StandardRestore(target))


def restore_variables(workdir: str, target: dict[str, Any], which: str = "best",
                      step: int | None = None) -> tuple[dict[str, Any], int]:
  """Model variables {'params', 'batch_stats'} shaped like `target` (e.g. `model.abstract_variables`).

  Reads only those two items of the saved train state, so it needs no optimiser settings.
  """
  target = {"params": target["params"], "batch_stats": target.get("batch_stats", {})}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  tree, step = _restore(workdir, which, step, args)
  variables = {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
  saved = {path: leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:  # a partial restore does not compare shapes
    if saved.get(path) != leaf.shape:
      raise InputError(f"checkpoint step {step} in {workdir!r} does not fit the configured model "
                       f"({jax.tree_util.keystr(path)}: saved {saved.get(path)}, model {leaf.shape}); use the "
                       "model.* settings it was trained with (a 3D checkpoint needs a 3D config, and vice versa)")
  return variables, step
