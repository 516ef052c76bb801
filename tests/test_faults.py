"""Faults a hostile but realistic user meets: NaN, kills between saves, locks, bad folders, Ctrl-C, disk full."""

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tifffile

from configs import unet2d
from unet_jax.cli import common as cli
from unet_jax.errors import InputError
from unet_jax.io import checkpoint, data, download, outputs, runlog
from unet_jax.network.model import abstract_variables, build_model, init_variables
from unet_jax.training import losses, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_nan_never_reaches_a_checkpoint(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  tiny_config.train.steps = 10
  trainer.train_and_evaluate(tiny_config, workdir)
  model = build_model(tiny_config.model)
  before, _ = checkpoint.restore_variables(workdir, abstract_variables(model), "latest")
  monkeypatch.setitem(losses.LOSSES, "log_dice", lambda s, smooth=1.0: jnp.nan * s["bce"])
  tiny_config.train.steps = 20
  with pytest.raises(InputError, match="became NaN or infinite .* resumes from the last saved \\(finite\\) step 10"):
    trainer.train_and_evaluate(tiny_config, workdir)
  assert checkpoint.saved_steps(workdir) == [10]  # nothing saved after the first NaN
  after, step = checkpoint.restore_variables(workdir, abstract_variables(model), "best")
  assert step == 10 and _finite(after)
  jax.tree.map(np.testing.assert_array_equal, after, before)


@pytest.mark.slow
def test_a_nan_step_changes_nothing_but_the_step(tiny_config, monkeypatch):
  from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  state = parallel.replicate(mesh, trainer.create_train_state(tiny_config, build_model(tiny_config.model, parallel.AXIS),
                                                              jax.random.PRNGKey(0)))
  monkeypatch.setitem(losses.LOSSES, "log_dice", lambda s, smooth=1.0: jnp.inf * s["bce"])
  batch = {"image": np.full((8, 32, 32, 1), 0.5, np.float32), "mask": np.zeros((8, 32, 32, 1), np.float32)}
  params = jax.device_get(state.params)
  new, metrics = trainer.make_parallel_train_step(mesh, tiny_config)(state, parallel.shard_batch(mesh, batch),
                                                                      jax.random.PRNGKey(1))
  assert int(metrics["nonfinite"]) == 1 and int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.params), params)


@pytest.mark.slow
def test_a_kill_between_the_two_saves_keeps_the_right_best(tiny_config, tmp_path, monkeypatch):
  """Killed right after the first of the two saves at the final step, the rerun still selects the best."""
  workdir = str(tmp_path / "run")
  original = ocp.CheckpointManager.save
  calls = []

  def save_then_die(self, step, *args, **kwargs):
    result = original(self, step, *args, **kwargs)
    calls.append(step)
    if step == 20 and calls.count(20) == 1:
      raise KeyboardInterrupt  # as kill -9 after one save
    return result

  monkeypatch.setattr(ocp.CheckpointManager, "save", save_then_die)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(tiny_config, workdir)
  monkeypatch.setattr(ocp.CheckpointManager, "save", original)
  trainer.train_and_evaluate(tiny_config, workdir)  # the rerun
  _, val = runlog.read(runlog.log_path(workdir))
  dice = {r["step"]: r["val_dice"] for r in val}
  assert set(dice) == {10, 20} and dice[10] != dice[20]
  _, best = checkpoint.restore_variables(workdir, abstract_variables(build_model(tiny_config.model)), "best")
  assert best == max(dice, key=dice.get)
  assert checkpoint.saved_steps(workdir)[-1] == 20


def _cut_largest_file(step_dir, name: str | None = None) -> str:
  """Truncates the largest file of a checkpoint step (or the one called `name`) to half its size (a full disk,
  a copy cut short)."""
  files = [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in names
           if n != checkpoint.MANIFEST and name in (None, n)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_resumes_from_the_newest_intact_one(tiny_config, tmp_path, capsys):
  """The latest step's largest file cut in half: the rerun sets that step aside, says so, resumes from the
  previous intact step and ends bit-identical to the uninterrupted run."""
  whole, damaged = str(tmp_path / "whole"), str(tmp_path / "damaged")
  trainer.train_and_evaluate(tiny_config, whole)  # 20 steps: checkpoints at 10 and 20
  target = abstract_variables(build_model(tiny_config.model))
  expected, step = checkpoint.restore_variables(whole, target, "latest")
  assert step == 20
  shutil.copytree(whole, damaged)
  _cut_largest_file(os.path.join(damaged, "checkpoints", "20"))
  if os.path.isdir(os.path.join(damaged, "best", "20")):  # so that the newest intact one is step 10
    _cut_largest_file(os.path.join(damaged, "best", "20"))
  capsys.readouterr()
  trainer.train_and_evaluate(tiny_config, damaged)
  out = capsys.readouterr().out
  assert re.search(r"note: checkpoint step 20 in .* is damaged \(.* bytes, .* were saved \(cut short\)\); moved to",
                   out), out
  assert "note: resuming from step 10, the newest intact checkpoint" in out
  assert os.path.isdir(os.path.join(damaged, "damaged", "checkpoints-20"))
  starts = [r["step"] for r in map(json.loads, open(os.path.join(damaged, "log.jsonl"))) if r.get("event") == "start"]
  assert starts == [0, 10]
  resumed, step = checkpoint.restore_variables(damaged, target, "latest")
  assert step == 20
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


@pytest.mark.slow
@pytest.mark.parametrize("recorded", [True, False], ids=["with_file_record", "older_checkpoint"])
def test_restoring_a_damaged_checkpoint_for_inference_is_one_line(tmp_path, recorded):
  """`restore_variables` (what Predictor runs) names the damaged step and what to do; without the file
  record of newer saves, the read error is told apart from a model mismatch by the saved shapes."""
  config = unet2d.get_config("tiny")
  model = build_model(config.model)
  variables = init_variables(model, jax.random.PRNGKey(0))
  workdir = str(tmp_path / "run")
  saver = checkpoint.Checkpoints(workdir)
  saver.save(5, {**variables, "step": np.int32(5)}, val_dice=0.5)
  saver.close()
  for store, name in (("checkpoints", None), ("best", "_METADATA")):  # a data file, or orbax's metadata
    if not recorded:
      os.remove(os.path.join(workdir, store, "5", checkpoint.MANIFEST))
    _cut_largest_file(os.path.join(workdir, store, "5"), name)
  target = abstract_variables(model)
  for which, todo in (("latest", r"rerun train\.py with the same --config and --workdir"),
                      ("best", r"--config\.eval\.checkpoint=latest")):
    with pytest.raises(InputError, match=rf"^checkpoint step 5 in .* is damaged, its files cannot be read .*; .*{todo}"
                       ) as e:
      checkpoint.restore_variables(workdir, target, which)
    assert "\n" not in str(e.value) and "does not fit" not in str(e.value)
  intact = str(tmp_path / "intact")  # the same check leaves a mismatch a mismatch
  saver = checkpoint.Checkpoints(intact)
  saver.save(5, {**variables, "step": np.int32(5)}, val_dice=0.5)
  saver.close()
  if not recorded:
    os.remove(os.path.join(intact, "best", "5", checkpoint.MANIFEST))
  wider = config.copy_and_resolve_references()
  wider.model.base_features = 8
  with pytest.raises(InputError, match="does not fit the configured model"):
    checkpoint.restore_variables(intact, abstract_variables(build_model(wider.model)), "best")


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = outputs.lock_workdir(str(workdir))
  result = _run("train.py", "--config=configs/unet2d.py:tiny", f"--workdir={workdir}")
  assert result.returncode != 0
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error: workdir") and f"process {os.getpid()}" in line and "Traceback" not in result.stderr
  assert not (workdir / "checkpoints").exists()
  lock.close()  # released: the next run may take it (a killed process releases it the same way)
  outputs.lock_workdir(str(workdir)).close()


def test_work_folder_that_is_a_file(tiny_config, tmp_path):
  (tmp_path / "run").write_text("not a folder")
  with pytest.raises(InputError, match="work folder .* is a file"):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))


@pytest.mark.slow
def test_resume_with_another_model_is_one_line(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  tiny_config.train.steps = 2
  tiny_config.train.checkpoint_every = 2
  trainer.train_and_evaluate(tiny_config, workdir)
  tiny_config.model.base_features = 8
  tiny_config.train.steps = 4
  with pytest.raises(InputError, match="does not fit the configured model"):
    trainer.train_and_evaluate(tiny_config, workdir)


def test_masks_without_foreground_warn(tiny_config, caplog):
  splits = data.load_splits(tiny_config.data)
  empty = data.Split(splits["val"].image, np.zeros_like(splits["val"].mask))
  with caplog.at_level(logging.WARNING):
    data.warn_if_empty({"train": splits["train"], "val": empty})
  assert "val split's mask has no foreground" in caplog.text and "train split" not in caplog.text


@pytest.mark.parametrize("error,expected", [
    (KeyboardInterrupt(), "error: interrupted; rerun to resume"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints"),
     "error: No space left on device (/data/run/checkpoints); free disk space"),
    (InputError("bad thing; do this"), "error: bad thing; do this")])
def test_what_stops_a_run_is_one_line(error, expected):
  def body():
    raise error
  with pytest.raises(SystemExit) as stop:
    cli.run(body, "rerun to resume")
  assert str(stop.value.code).startswith(expected)


def test_os_errors_say_what_is_wrong(tmp_path):
  """Each errno its own line naming the path; only a full disk says to free disk space (issue: "File exists" and
  "Is a directory" were told as a full disk)."""
  a_file, a_folder = tmp_path / "a_file", tmp_path / "out.zip"
  a_file.write_text("an earlier result")
  a_folder.mkdir()

  def error_of(call):
    with pytest.raises(OSError) as caught:
      call()
    return caught.value

  q = lambda path: re.escape(repr(str(path)))
  cases = [
      (error_of(lambda: os.makedirs(a_file, exist_ok=True)),  # EEXIST: an output folder that is a file
       rf"^{q(a_file)} already exists as a file, in the way of what this run writes; choose another path"),
      (error_of(lambda: open(a_folder, "w")), rf"^{q(a_folder)} is a folder, where a file is needed"),  # EISDIR
      (error_of(lambda: os.replace(a_file, a_folder)), rf"^{q(a_folder)} is a folder, where a file is needed"),
      (error_of(lambda: open(a_file / "model.zip", "w")),  # ENOTDIR: an output whose parent is a file
       rf"^cannot use {q(a_file / 'model.zip')}: {q(a_file)} is a file, not a folder; choose another path"),
      (OSError(errno.EACCES, "Permission denied", "/data/out"), r"^permission denied for '/data/out'; use a folder "),
      (OSError(errno.EROFS, "Read-only file system", "/mnt/cd/out"),
       r"^'/mnt/cd/out' is on a read-only file system; choose a folder on a writable disk"),
      (OSError(errno.ENOSPC, "No space left on device", "/data/run"),
       r"^No space left on device \(/data/run\); free disk space or choose another folder, then rerun"),
  ]
  for error, expected in cases:
    line = cli.os_error_line(error)
    assert re.search(expected, line), line
    assert ("free disk space" in line) == (error.errno == errno.ENOSPC) and "\n" not in line

    def body(error=error):
      raise error
    with pytest.raises(SystemExit) as stop:
      cli.run(body, "rerun")
    assert stop.value.code == f"error: {line}"
  assert a_file.read_text() == "an earlier result"


@pytest.mark.slow
def test_unknown_config_key_and_mask_without_input_are_one_line(tmp_path):
  result = _run("train.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}", "--config.train.stepz=5")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: bad command line") and "steps" in result.stderr
  result = _run("evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}", "--mask=m.tif")
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: --mask goes with --input")


def test_a_corrupt_lucchi_file_on_disk_is_one_line(tmp_path):
  path = tmp_path / "training.tif"
  tifffile.imwrite(path, np.zeros((4, 16, 16), np.uint8), photometric="minisblack")
  path.write_bytes(path.read_bytes()[:600])
  with pytest.raises(InputError, match="is damaged .* delete it to download again"):
    download.check_stack(str(path), (4, 16, 16))
