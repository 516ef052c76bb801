"""Train step, data parallelism, checkpoints, resume, and a tiny end-to-end run."""

import json
import os

import jax
import numpy as np
import pytest

from train_steps import assert_one_and_two_devices_agree, batch_2d, fresh_state, train_states
from unet_jax.errors import InputError
from unet_jax.io import checkpoint, data
from unet_jax.network.model import abstract_variables, build_model
from unet_jax.scores import metrics
from unet_jax.training import parallel, trainer


@pytest.mark.slow
def test_train_step_lowers_the_loss(tiny_config):
  tiny_config.augment.flips = False
  losses = [float(m["loss"]) for _, m in train_states(tiny_config, batch_2d(), 15)]
  assert losses[-1] < losses[0] - 0.05


@pytest.mark.slow
def test_two_devices_match_one(tiny_config):
  assert_one_and_two_devices_agree(tiny_config, batch_2d(), steps=3)


def test_batch_must_divide_devices(tiny_config, tmp_path):
  tiny_config.train.batch_size = 3
  with pytest.raises(InputError, match="multiple of the 2 devices"):
    trainer.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.slow
def test_checkpoint_round_trip(tiny_config, tmp_path):
  mesh = parallel.make_mesh()
  state = fresh_state(tiny_config, mesh)
  state, _ = trainer.make_parallel_train_step(mesh, tiny_config)(state, parallel.shard_batch(mesh, batch_2d()),
                                                                 jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2)
  ckpt.save(1, trainer.state_tree(state), val_dice=0.5)
  ckpt.close()
  fresh = trainer.state_tree(fresh_state(tiny_config, mesh))
  restored, step = checkpoint.restore(str(tmp_path), fresh, "best")
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(trainer.state_tree(state)))


@pytest.mark.slow
def test_restore_a_given_step(tiny_config, tmp_path):
  mesh = parallel.make_mesh()
  states = {n: trainer.state_tree(fresh_state(tiny_config, mesh)) for n in (1, 2)}
  states[2]["params"] = jax.tree.map(lambda p: p + 1.0, states[2]["params"])
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=5)
  for step, state in states.items():
    ckpt.save(step, state)
  ckpt.close()
  assert checkpoint.saved_steps(str(tmp_path)) == [1, 2]
  for step, state in states.items():
    restored, got = checkpoint.restore(str(tmp_path), states[1], "best", step=step)
    assert got == step
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["params"]), jax.device_get(state["params"]))
  with pytest.raises(InputError, match="no step 3 checkpoint"):
    checkpoint.restore(str(tmp_path), states[1], "latest", step=3)


def test_restore_without_checkpoint(tiny_config, tmp_path):
  with pytest.raises(InputError, match="no best checkpoint"):
    checkpoint.restore(str(tmp_path), {}, "best")


@pytest.mark.slow
def test_end_to_end_and_resume(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  tiny_config.train.steps = 10
  first = trainer.train_and_evaluate(tiny_config, workdir)
  assert first["step"] == 10
  model = build_model(tiny_config.model)
  variables, _ = checkpoint.restore_variables(workdir, abstract_variables(model), "latest")
  assert first["dice"] == pytest.approx(trainer.evaluate_split(model, variables, data.load_splits(tiny_config.data)["val"],
                                                                tiny_config.eval)["dice"])  # the saved state's score
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  tiny_config.train.steps = 20  # a longer schedule resumes from step 10
  second = trainer.train_and_evaluate(tiny_config, workdir)
  assert second["step"] == 20
  records = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  starts = [r["step"] for r in records if r.get("event") == "start"]
  assert starts == [0, 10]
  assert any("val_dice" in r for r in records) and any("loss" in r for r in records)


@pytest.mark.slow
def test_select_threshold_scores_validation_at_its_best_candidate(tiny_config):
  """With eval.select_threshold each validation scores (and picks checkpoints) at the val split's best threshold."""
  model = build_model(tiny_config.model)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 1), np.float32), train=False)
  val = data.load_splits(tiny_config.data)["val"]
  fixed, probs = trainer.score_split(model, variables, val, tiny_config.eval)
  assert "threshold" not in fixed
  tiny_config.eval.select_threshold = True
  tiny_config.eval.threshold_candidates = (0.2, 0.4, 0.5, 0.6, 0.8)
  chosen, _ = trainer.score_split(model, variables, val, tiny_config.eval)
  dice = [metrics.pixel_scores(probs >= t, val.mask)["dice"] for t in tiny_config.eval.threshold_candidates]
  assert chosen["threshold"] == tiny_config.eval.threshold_candidates[int(np.argmax(dice))]
  assert chosen["dice"] == pytest.approx(max(dice)) and chosen["dice"] >= fixed["dice"]
