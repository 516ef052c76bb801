"""Smoke tests of the PyTorch peers (benchmarks/torch_pipeline.py, end_to_end.py, torch_train.py) on tiny synthetic
data: a couple of steps each, the output lines parse and the figures are positive and finite. No timing assertions.
The peers' losses (benchmarks/torch_unet.py LOSSES) equal ours on the same batch."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import tifffile

from script_runs import run_script
from unet_jax.io import synthetic
from unet_jax.training import losses

TINY = "--config=configs/unet2d.py:tiny,aug=full"
installed = lambda *modules: all(importlib.util.find_spec(m) for m in modules)
needs_torch = pytest.mark.skipif(not installed("torch"), reason="torch is not installed "
                                 "(pip install -r benchmarks/requirements.txt)")
needs_peer = pytest.mark.skipif(not installed("torch", "monai"), reason="torch and monai are not installed "
                                "(pip install -r benchmarks/requirements.txt)")


def run(script: str, *args: str) -> str:
  """stdout of benchmarks/`script` with `args`, run from the repository root; fails the test on a non-zero exit."""
  done = run_script(os.path.join("benchmarks", script), *args)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  return done.stdout


def json_lines(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def positive(*values: float) -> bool:
  return all(math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
@needs_peer
def test_pipeline_with_a_worker():
  (result,) = json_lines(run("torch_pipeline.py", TINY, "--workers=1", "--steps=2", "--warmup=1"))
  assert (result["side"], result["aug"], result["workers"], result["steps"]) == ("peer", "full", 1, 2)
  assert positive(result["img_per_s"], result["seconds"]) and 0 <= result["data_wait"] < 1


@pytest.mark.slow
@needs_peer
def test_end_to_end_table():
  out = run("end_to_end.py", TINY, "--steps=2", "--warmup=1", "--workers=0", "--infer_slices=0")
  results = json_lines(out)
  assert {(r["side"], r["aug"]) for r in results} == {(s, a) for s in ("ours", "peer") for a in ("full", "none")}
  for r in results:
    assert positive(r["img_per_s"]) and 0 <= r["data_wait"] < 1
  ratios = [line for line in out.splitlines() if line.startswith("| **ratio ours / peer")]
  assert len(ratios) == 2 and all(positive(float(line.split("**")[3].rstrip("x"))) for line in ratios)


@pytest.mark.slow
@needs_peer
def test_train_script(tmp_path):
  for name, seed, slices in (("training", 0, 3), ("testing", 1, 2)):
    image, mask = synthetic.make_stack(seed, slices, (64, 64))
    tifffile.imwrite(tmp_path / f"{name}.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / f"{name}_groundtruth.tif", mask, photometric="minisblack")
  out = run("torch_train.py", f"--data={tmp_path}", "--steps=2", "--patch=32", "--window=32", "--checkpoints=2")
  checkpoints = json_lines(out)
  assert [c["step"] for c in checkpoints] == [1, 2]
  for c in checkpoints:
    assert positive(c["minutes"], c["loss"]) and all(0 <= c[k] <= 1 for k in ("test_dice", "precision", "recall"))
  assert "test Dice" in out.splitlines()[-1]


@pytest.mark.slow
@needs_peer
def test_train_script_skips_without_data(tmp_path):
  assert run("torch_train.py", f"--data={tmp_path}").startswith("skipped:")


@needs_torch
@pytest.mark.parametrize("smooth", [1.0, 1e-3])
@pytest.mark.parametrize("name", ["log_dice", "bce_dice"])
def test_peer_loss_equals_ours(name, smooth):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_unet  # pylint: disable=g-import-not-at-top
  assert set(torch_unet.LOSSES) <= set(losses.LOSSES)
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (4, 16, 16, 1)).astype(np.float32)  # [B, H, W, 1]: ours is channels last
  mask = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
  ours = float(losses.loss_value(name, logits, mask, smooth))
  channels_first = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))
  peer = float(torch_unet.LOSSES[name](channels_first(logits), channels_first(mask), smooth))
  assert peer == pytest.approx(ours, abs=1e-5)


@needs_torch
@pytest.mark.parametrize("stem", [None, (2, 2)])
def test_the_twin_computes_our_network_with_our_weights(stem):
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_unet  # pylint: disable=g-import-not-at-top
  from test_onnx_engine import spread_variables  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import UNet  # pylint: disable=g-import-not-at-top
  model = UNet(depth=2, base_features=4, stem=stem)
  variables = spread_variables(model)
  x = np.random.default_rng(0).random((2, 32, 24, 1)).astype(np.float32)
  ours = np.asarray(model.apply(variables, x))
  net = torch_unet.copy_flax_variables(torch_unet.twin(model), variables).eval()
  with torch.no_grad():
    peer = net(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))).numpy()
  assert ours.std() > 0.1
  np.testing.assert_allclose(np.moveaxis(peer, 1, -1), ours, atol=1e-4)
