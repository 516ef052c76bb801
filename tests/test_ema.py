"""Weight EMA (train.ema_decay): the bias-corrected average of the steps' parameters is what is
validated, checkpointed and run; resuming keeps the average."""

import jax
import numpy as np
import pytest

from train_steps import batch_2d, train_states
from unet_jax.io import checkpoint, data
from unet_jax.network.model import abstract_variables, build_model
from unet_jax.training import trainer


@pytest.mark.slow
def test_the_average_is_the_bias_corrected_mean_of_the_steps(tiny_config):
  tiny_config.train.ema_decay = d = 0.8
  seen = []
  for state, _ in train_states(tiny_config, batch_2d(), 3):
    seen.append(jax.device_get(state.params))
  # (1 - d)(d^2 p1 + d p2 + p3) / (1 - d^3): weights summing to 1, the latest step weighted most.
  expected = jax.tree.map(lambda a, b, c: (1 - d) * (d * d * a + d * b + c) / (1 - d ** 3), *seen)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               jax.device_get(trainer.averaged_params(state)), expected)
  assert trainer.averaged_params(state.replace(ema=None)) is state.params


@pytest.mark.slow
def test_checkpoints_hold_the_average_and_resume_keeps_it(tiny_config, tmp_path):
  tiny_config.train.ema_decay = 0.9
  tiny_config.train.steps = 10
  workdir = str(tmp_path / "run")
  first = trainer.train_and_evaluate(tiny_config, workdir)
  model = build_model(tiny_config.model)
  variables, _ = checkpoint.restore_variables(workdir, abstract_variables(model), "latest")
  val = data.load_splits(tiny_config.data)["val"]
  assert first["dice"] == pytest.approx(trainer.evaluate_split(model, variables, val, tiny_config.eval)["dice"])
  target = trainer.state_tree(trainer.create_train_state(tiny_config, model, jax.random.PRNGKey(0)))
  tree, _ = checkpoint.restore(workdir, target, "latest")
  restored = trainer.from_state_tree(trainer.create_train_state(tiny_config, model, jax.random.PRNGKey(0)), tree)
  jax.tree.map(np.testing.assert_array_equal, tree["params"], trainer.averaged_params(restored))
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, tree["params"], tree["train_params"])))
  tiny_config.train.steps = 20
  assert trainer.train_and_evaluate(tiny_config, workdir)["step"] == 20  # resumes with its average
