"""Fine-tuning: `train.init_from` starts a fresh run from another model's weights, each shape checked."""

import jax
import numpy as np
import pytest

from configs import unet2d
from test_inference import save_random_checkpoint
from unet_jax.errors import InputError
from unet_jax.io import checkpoint
from unet_jax.network.model import abstract_variables, build_model
from unet_jax.training import trainer


def test_init_from_reads_the_weights_as_saved(tmp_path):
  config = unet2d.get_config("tiny")
  saved = save_random_checkpoint(config, str(tmp_path / "source"))
  config.train.init_from = str(tmp_path / "source")
  found = trainer.initial_variables(config, build_model(config.model))
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), found, saved))


def test_init_from_a_model_of_other_shapes_is_one_line_naming_the_mismatch(tmp_path):
  source = unet2d.get_config("tiny")
  save_random_checkpoint(source, str(tmp_path / "source"))
  config = unet2d.get_config("tiny")
  config.model.base_features = 8
  config.train.init_from = str(tmp_path / "source")
  with pytest.raises(InputError) as e:
    trainer.initial_variables(config, build_model(config.model))
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"train.init_from={str(tmp_path / 'source')!r}")
  assert "does not fit the configured model" in message and "saved (16,), model (32,)" in message


def test_init_from_a_missing_model_is_one_line(tmp_path):
  config = unet2d.get_config("tiny")
  config.train.init_from = str(tmp_path / "nothing")
  with pytest.raises(InputError, match=r"^train.init_from=.*no best checkpoint"):
    trainer.initial_variables(config, build_model(config.model))


@pytest.mark.slow
def test_training_starts_from_the_given_weights(tmp_path):
  """With a zero learning rate the run's checkpoint holds exactly the weights it started from."""
  config = unet2d.get_config("tiny")
  saved = save_random_checkpoint(config, str(tmp_path / "source"))
  config.train.init_from = str(tmp_path / "source")
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 1
  config.optim.learning_rate = 0.0
  trainer.train_and_evaluate(config, str(tmp_path / "tuned"))
  model = build_model(config.model)
  tuned, step = checkpoint.restore_variables(str(tmp_path / "tuned"), abstract_variables(model), "latest")
  assert step == 1
  assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b), tuned["params"], saved["params"]))
