"""Results are never lost: inference restores without the trainer, outputs are checked and atomic."""

import hashlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.inference import segment
from unet_jax.io import checkpoint, outputs
from unet_jax.network.model import build_model, init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _saved_run(config, workdir):
  """A checkpoint as the trainer writes it (train state with an optimiser state), random weights."""
  variables = init_variables(build_model(config.model), jax.random.PRNGKey(1))
  state = {**variables, "opt_state": {"mu": np.ones(3, np.float32)}, "step": np.int32(7)}
  saver = checkpoint.Checkpoints(workdir)
  saver.save(7, state, val_dice=0.5)
  saver.close()
  return variables


def _digest(folder):
  return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_inference_modules_import_neither_trainer_nor_optax():
  code = ("import sys; import unet_jax.inference.segment, unet_jax.reports.evaluation; "
          "print(sorted(m for m in ('unet_jax.training.trainer', 'optax') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["absent", "invalid"])
def test_segmentation_restores_without_an_optim_block(tmp_path, optim):
  config = unet2d.get_config("tiny")
  variables = _saved_run(config, str(tmp_path / "run"))
  if optim == "absent":
    del config["optim"]
    del config["train"]
  else:
    config.optim.name, config.optim.learning_rate, config.train.patch_size = "lamb", -1.0, 0
  stack = (np.random.default_rng(0).random((2, 40, 36)) * 255).astype(np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
  summary = segment.segment_file(config, str(tmp_path / "run"), str(tmp_path / "stack.tif"),
                                 str(tmp_path / "out"), progress=False)
  assert summary["step"] == 7
  restored, _ = checkpoint.restore_variables(str(tmp_path / "run"), jax.eval_shape(lambda: variables))
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


@pytest.mark.slow
def test_wrong_model_config_is_one_line(tmp_path):
  config = unet2d.get_config("tiny")
  _saved_run(config, str(tmp_path / "run"))
  config.model.base_features = 8
  target = jax.eval_shape(lambda: init_variables(build_model(config.model), jax.random.PRNGKey(0)))
  with pytest.raises(InputError, match="does not fit the configured model"):
    checkpoint.restore_variables(str(tmp_path / "run"), target)


@pytest.mark.slow
def test_output_never_replaces_the_input(tmp_path):
  config = unet2d.get_config("tiny")
  _saved_run(config, str(tmp_path / "run"))
  out = tmp_path / "out"
  out.mkdir()
  stack = (np.random.default_rng(0).random((2, 40, 36)) * 255).astype(np.uint8)
  tifffile.imwrite(out / "segmentation.tif", stack, photometric="minisblack")
  before = _digest(out)
  with pytest.raises(InputError, match="would overwrite the input"):
    segment.segment_file(config, str(tmp_path / "run"), str(out / "segmentation.tif"), str(out), progress=False)
  assert _digest(out) == before


@pytest.mark.slow
def test_unwritable_output_folder_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(InputError, match="is a file, not a folder"):
    outputs.check_writable(str(tmp_path / "a_file"), "output folder")
  with pytest.raises(InputError, match="cannot be written"):
    outputs.check_writable(str(tmp_path / "a_file" / "below"), "output folder")
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}",
       f"--report_dir={tmp_path / 'a_file' / 'report'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: report folder") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_failed_segmentation_leaves_earlier_results_byte_identical(tmp_path):
  config = unet2d.get_config("tiny")
  _saved_run(config, str(tmp_path / "run"))
  rng = np.random.default_rng(0)
  stack = (rng.random((3, 40, 36)) * 255).astype(np.uint8)
  mask = (rng.random((3, 40, 36)) > 0.5).astype(np.uint8) * 255
  tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
  tifffile.imwrite(tmp_path / "mask.tif", mask, photometric="minisblack")
  out = str(tmp_path / "out")
  segment.segment_file(config, str(tmp_path / "run"), str(tmp_path / "stack.tif"), out, str(tmp_path / "mask.tif"),
                       progress=False)
  before = _digest(out)
  mask[2, 0, 0] = 7  # not binary: fails at the last slice, after two pages of each output were written
  tifffile.imwrite(tmp_path / "bad_mask.tif", mask, photometric="minisblack")
  with pytest.raises(InputError, match="not binary"):
    segment.segment_file(config, str(tmp_path / "run"), str(tmp_path / "stack.tif"), out,
                         str(tmp_path / "bad_mask.tif"), progress=False)
  assert _digest(out) == before  # same files, same bytes, no temporary left behind


def _killed_writer(folder, name):
  """A process killed with -9 while it held `folder/name.tmp-PID` half-written: its PID."""
  code = ("import os, sys, time; open(os.path.join(sys.argv[1], sys.argv[2] + '.tmp-' + str(os.getpid())), 'w')"
          ".write('half'); print(flush=True); time.sleep(60)")
  process = subprocess.Popen([sys.executable, "-c", code, str(folder), name], stdout=subprocess.PIPE, text=True)
  process.stdout.readline()
  process.kill()
  process.wait()
  return process.pid


def test_a_killed_runs_temporary_files_are_removed_by_the_next_write(tmp_path):
  dead = _killed_writer(tmp_path, "segmentation.tif")
  os.makedirs(tmp_path / f"vol.ome.zarr.tmp-{dead}" / "s0")  # ngff.atomic_folder's
  alive = os.getppid()
  for name in (f"other.tif.tmp-{alive}", "notes.tmp-draft"):  # a running process's, and not a temporary name
    (tmp_path / name).write_text("keep")
  outputs.write_json(str(tmp_path / "summary.json"), {"a": 1})
  assert sorted(os.listdir(tmp_path)) == sorted(["summary.json", f"other.tif.tmp-{alive}", "notes.tmp-draft"])


@pytest.mark.slow
def test_evaluate_input_after_a_kill_leaves_no_temporary_files(tmp_path):
  config = unet2d.get_config("tiny")
  _saved_run(config, str(tmp_path / "run"))
  stack = (np.random.default_rng(0).random((2, 40, 36)) * 255).astype(np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
  out = tmp_path / "out"
  out.mkdir()
  dead = [_killed_writer(out, name) for name in segment.OUTPUT_FILES]  # as `kill -9` mid-write leaves them
  assert len(os.listdir(out)) == 3
  result = subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                           f"--workdir={tmp_path / 'run'}", f"--input={tmp_path / 'stack.tif'}", f"--output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(out)) == sorted(segment.OUTPUT_FILES) and dead
