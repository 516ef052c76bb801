"""benchmarks/val_selection.py: the policies' choices on hand-made counts, and a run on the tiny config."""

import json

import numpy as np
import pytest

from benchmarks import val_selection  # the repository root is on pytest's pythonpath (pyproject.toml)
from configs import unet2d
from script_runs import run_script
from unet_jax.inference.predictor import Predictor
from unet_jax.io import checkpoint, data
from unet_jax.network.model import abstract_variables, build_model



def counts_for(dice_table: np.ndarray) -> np.ndarray:
  """i64[C, S, T, 4] counts whose Dice is `dice_table` [C, S, T]: tp = 50 d, fp = fn = 50 (1 - d), of 100."""
  tp = np.round(100 * dice_table).astype(np.int64) // 2
  rest = 50 - tp
  return np.stack([tp, rest, rest, np.full_like(tp, 1000)], -1)


def test_each_policy_judges_its_own_choice_on_the_other_slice():
  # 3 checkpoints x 2 slices x 2 thresholds (index 1 = the fixed one). Slice 0 prefers checkpoint 1 at
  # threshold 0; slice 1 disagrees: there checkpoint 1 at threshold 0 is poor, the last one is good.
  table = np.array([[[0.50, 0.60], [0.50, 0.60]],
                    [[0.90, 0.70], [0.40, 0.62]],
                    [[0.78, 0.80], [0.76, 0.84]]])
  result = val_selection.choose(counts_for(table), [0], [1], fixed=1)
  assert result == {"best+chosen": 0.4, "best@fixed": 0.84, "latest+chosen": 0.84, "latest@fixed": 0.84}
  result = val_selection.choose(counts_for(table), [1], [0], fixed=1)
  assert result == {"best+chosen": 0.8, "best@fixed": 0.8, "latest+chosen": 0.8, "latest@fixed": 0.8}


@pytest.mark.slow
def test_runs_on_a_tiny_training_run(tmp_path):
  flags = ["--config=configs/unet2d.py:tiny", "--config.data.val_fraction=0.4"]
  done = run_script("train.py", *flags, f"--workdir={tmp_path / 'run'}")
  assert done.returncode == 0, done.stderr[-2000:]
  out = tmp_path / "selection.json"
  done = run_script("benchmarks/val_selection.py", *flags, f"--workdir={tmp_path / 'run'}", f"--json_out={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.load(open(out))
  assert result["steps"] == [10, 20] and [(f["choosing"], f["judging"]) for f in result["folds"]] == [([0], [1]),
                                                                                                      ([1], [0])]
  assert "| latest@fixed |" in done.stdout
  # The fixed-threshold policies again, from each checkpoint's own val probabilities and Dice by hand.
  config = unet2d.get_config("tiny")
  config.data.val_fraction = 0.4
  val = data.load_splits(config.data)["val"]
  model = build_model(config.model)
  restore = lambda step: checkpoint.restore_variables(str(tmp_path / "run"), abstract_variables(model), step=step)[0]
  preds = [Predictor.create(model, restore(step), config.eval).raw_probabilities(val.image) >= config.eval.threshold
           for step in (10, 20)]
  truth = val.mask > 0
  dice = np.array([[2 * np.sum(p & t) / (2 * np.sum(p & t) + np.sum(p ^ t)) for p, t in zip(pred, truth)]
                   for pred in preds])  # [checkpoint, slice]
  for fold in result["folds"]:
    (choosing,), (judging,) = fold["choosing"], fold["judging"]
    assert fold["latest@fixed"] == pytest.approx(dice[-1, judging], abs=1e-6)
    assert fold["best@fixed"] == pytest.approx(dice[np.argmax(dice[:, choosing]), judging], abs=1e-6)
