"""config_check.validate: every section's bad values fail up front, in the entry points, in one line."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.network.model import UNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One bad value per section, each of a kind a user types: out of range, unknown name, wrong type.
BAD = {
    "run": ("seed", -1),
    "distributed": ("distributed.num_processes", 0),
    "data": ("data.val_fraction", 1.0),
    "model": ("model.norm", "layer"),
    "train": ("train.patch_size", 0),
    "optim": ("optim.learning_rate", -0.001),
    "augment": ("augment.gamma", (1.2, 0.8)),
    "eval": ("eval.tta", "rot90"),
    "explain": ("explain.ig_steps", 1),
}


def _set(config, path, value):
  """Sets a field, whatever its type (as a config built in Python could)."""
  *parents, name = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with config.ignore_type():
    node[name] = value


@pytest.mark.parametrize("variant", unet2d.VARIANTS)
def test_shipped_configs_are_valid(variant):
  config_check.validate(unet2d.get_config(variant))


@pytest.mark.parametrize("section", config_check.SECTIONS)
def test_each_section_rejects_its_bad_value(section):
  config = unet2d.get_config("tiny")
  path, value = BAD[section]
  _set(config, path, value)
  with pytest.raises(InputError, match=rf"^config field {path}=.* is invalid: it must be "):
    config_check.validate(config)
  config_check.validate(config, [s for s in config_check.SECTIONS if s != section])  # only that section


@pytest.mark.parametrize("path,value", [
    ("train.loss", "focal"), ("train.keep_checkpoints", 0), ("train.eval_every", 0), ("train.log_every", 0),
    ("train.steps", 2.5), ("eval.threshold", 1.5), ("eval.threshold", 0.0), ("eval.overlap", 1.0),
    ("eval.window", (32, 32, 32, 32)), ("eval.checkpoint", "last"), ("eval.select_threshold", 1),
    ("optim.name", "lamb"), ("optim.schedule", "step"), ("model.dtype", "float16"), ("model.depth", 0),
    ("augment.rotate_prob", 1.5), ("augment.flips", "yes"), ("data.name", "vnc"),
    ("data.voxel_size_nm", (5.0, 5.0)), ("augment.noise_std", float("nan")), ("eval.engine", "tensorrt"),
    ("eval.bootstrap_resamples", 100), ("eval.uncertainty", "mc_dropout"), ("model.context_slices", -1),
    ("train.budget_minutes", -1.0), ("explain.cam_layers", "bottleneck"),
    # values that let a run start and then crash or overflow (int32 step counters, 32-bit seeds, float budgets)
    ("train.steps", 3_000_000_000), ("train.budget_minutes", 1e308), ("train.max_minutes", 1e308),
    ("train.eval_every", 2**31), ("optim.warmup_steps", 2**40), ("seed", 2**40), ("data.synthetic.seed", 2**32),
    ("train.batch_size", 10**9), ("train.patch_size", 10**6), ("eval.window", 10**6), ("eval.figure_px", 10**9),
    ("eval.batch_size", 10**9), ("train.keep_checkpoints", 10**9), ("augment.elastic_alpha", 1e308),
    ("data.synthetic.test_shape", (64, 64, 64)), ("data.synthetic.test_shape", (8, 64)),
    ("eval.select_min_size", "yes"), ("eval.min_size_candidates", (10, -1)), ("eval.min_size_candidates", ()),
    ("train.boundary_weight", -1.0), ("train.boundary_width", 0)])
def test_bad_values_name_the_field_and_the_allowed(path, value):
  config = unet2d.get_config("tiny")
  _set(config, path, value)
  with pytest.raises(InputError, match=rf"{path}=.* must be "):
    config_check.validate(config)


def test_cross_field_rules():
  config = unet2d.get_config("tiny")
  config.train.patch_size = 30  # not divisible by 2**depth = 4
  with pytest.raises(InputError, match=r"train.patch_size=30 .* divisible by 2\*\*model.depth=4"):
    config_check.validate(config)
  config = unet2d.get_config("tiny")
  with config.ignore_type():
    config.eval.window = (32, 32, 32)
  with pytest.raises(InputError, match="eval.window=.* (2 sizes for a 2D model|has 3 sizes but model.ndim=2)"):
    config_check.validate(config)
  config = unet2d.get_config("tiny")
  config.distributed.process_id = 1
  with pytest.raises(InputError, match="process_id=1 must be below"):
    config_check.validate(config)
  config = unet2d.get_config("vnc")  # its engine is ONNX Runtime, whose export has no GroupNorm
  config.model.norm = "group"
  with pytest.raises(InputError, match="eval.engine='onnx' needs model.norm 'batch' or 'none'.*eval.engine=xla"):
    config_check.validate(config)
  config = unet2d.get_config("tiny")
  config.data.final_fit = True  # val in training: it can no longer pick the checkpoint or the threshold
  with pytest.raises(InputError, match="final_fit=True trains on the val slices.*eval.checkpoint=latest"):
    config_check.validate(config)
  config.eval.checkpoint = "latest"
  config_check.validate(config)
  config.eval.select_threshold = True
  with pytest.raises(InputError, match="final_fit"):
    config_check.validate(config)
  config.eval.select_threshold, config.eval.select_min_size = False, True  # nor the minimum object size
  with pytest.raises(InputError, match="final_fit.*--config.eval.select_min_size=False"):
    config_check.validate(config)
  config = unet2d.get_config("vnc_classes")  # argmax label maps: no size choice either
  config.eval.select_min_size = True
  with pytest.raises(InputError, match="num_classes=5 .* --config.eval.select_min_size=False"):
    config_check.validate(config)
  config = unet2d.get_config("vnc_classes")
  config.train.boundary_weight = 2.0  # edges of one binary mask
  with pytest.raises(InputError, match="train.boundary_weight=2.0 weighs the edges of a binary mask"):
    config_check.validate(config)


@pytest.mark.parametrize("path,value,allowed", [
    ("train.steps", 3_000_000_000, r"an integer in \[1, 100000000\]"),
    ("train.budget_minutes", 1e308, r"minutes in \[0, 10080\]"),
    ("train.max_minutes", float("inf"), r"minutes in \[0, 10080\]")])
def test_absurd_values_say_the_maximum(path, value, allowed):
  config = unet2d.get_config("tiny")
  config.optim.warmup_steps = config.train.budget_measure_steps  # as a budgeted run needs
  _set(config, path, value)
  with pytest.raises(InputError, match=rf"^config field {path}=.* is invalid: it must be {allowed}"):
    config_check.validate(config)
  _set(config, path, {"train.steps": 10**8, "train.budget_minutes": 10080.0, "train.max_minutes": 10080.0}[path])
  config_check.validate(config)  # the maximum itself is allowed


@pytest.mark.slow
def test_group_norm_needs_widths_divisible_by_its_groups():
  config = unet2d.get_config("tiny")  # base_features=4: levels of 4, 8, 16 channels; GroupNorm has 8 groups
  config.model.norm = "group"
  with pytest.raises(InputError, match=r"^model.norm='group' needs model.base_features divisible by its 8 groups .*"
                     r"got model.base_features=4; use a multiple of 8 \(e.g. 8\) or --config.model.norm=batch$"):
    config_check.validate(config)
  config_check.validate(config, [s for s in config_check.SECTIONS if s != "model"])  # a model rule
  config.model.base_features = 8
  config_check.validate(config)
  UNet(depth=2, base_features=8, norm="group").init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError):  # what the rule prevents: flax refuses 4 channels in 8 groups, at trace time
    UNet(depth=2, base_features=4, norm="group").init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("flag,field", [
    ("--config.model.norm=group", "model.norm='group' needs model.base_features"),
    ("--config.train.steps=3000000000", "config field train.steps=3000000000 is invalid"),
    ("--config.train.budget_minutes=1e308", "config field train.budget_minutes=1e+308 is invalid")])
def test_rules_that_would_crash_a_started_run_refuse_it_in_seconds(flag, field, tmp_path):
  start = time.time()
  result = subprocess.run([sys.executable, "train.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}/w",
                           flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and lines and lines[-1].startswith(f"error: {field}"), result.stderr[-2000:]
  assert "Traceback" not in result.stderr and time.time() - start < 60
  assert not os.path.exists(tmp_path / "w")


def test_inference_needs_no_optim_block():
  config = unet2d.get_config("tiny")
  del config["optim"]
  del config["train"]
  config_check.validate(config, config_check.INFERENCE_SECTIONS)
  config_check.validate(config)  # absent blocks are skipped
  del config.eval["tta"]
  with pytest.raises(InputError, match="config field eval.tta is missing"):
    config_check.validate(config)


def test_config_argument_and_presets():
  flips = unet2d.get_config("vnc,aug=flips")
  assert flips.augment.flips and flips.augment.rotate_prob == 0.0 and flips.data.name == "folder"
  none = unet2d.get_config("synthetic,aug=none")
  assert not none.augment.flips and none.augment.blur_prob == 0.0
  assert unet2d.get_config("vnc").augment.rotate_prob == 0.0  # VNC's default preset is flips (its sweep's choice)
  assert unet2d.get_config("vnc,aug=full").augment.rotate_prob == 0.5
  assert unet2d.get_config("lucchi").augment.rotate_prob == 0.5
  final = unet2d.get_config("vnc,fit=final")  # the last run: val slices train, nothing is chosen on them
  assert final.data.final_fit and final.eval.checkpoint == "latest" and final.eval.threshold == 0.5
  assert not (final.eval.select_threshold or final.eval.select_min_size)
  config_check.validate(final)
  assert final.augment.rotate_prob == 0.0 and final.model.space_to_depth == 2  # the rest of the recipe is vnc's
  assert not unet2d.get_config("vnc,fit=val").data.final_fit
  for bad in ("vnc,aug=strong", "mnist", "vnc,flips", "vnc,fit=best"):
    with pytest.raises((ValueError, InputError)):
      unet2d.get_config(bad)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["train.py", "evaluate.py"])
@pytest.mark.parametrize("section", config_check.SECTIONS)
def test_entry_points_fail_before_loading_data(entry, section, tmp_path):
  """A bad value stops the entry point with one line naming the field, before any data is read.

  The data folder does not exist: had data loading come first, the error would name the files.
  evaluate.py checks only what inference uses, so its bad train/optim/augment/distributed values pass
  validation and it stops at the missing data instead.
  """
  path, value = BAD[section]
  start = time.time()
  result = subprocess.run(
      [sys.executable, entry, "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}/w",
       f"--config.data.root={tmp_path}/absent", "--config.data.name=folder", f"--config.{path}={value}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and lines, result.stderr
  used = entry == "train.py" or section in config_check.INFERENCE_SECTIONS
  if used:
    assert lines[-1].startswith(f"error: config field {path}="), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert time.time() - start < 60
  else:
    assert lines[-1].startswith("error: ") and "absent" in lines[-1]
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
