"""Mean teacher on unlabelled stacks (train.consistency_weight): the consistency loss, its views and batches,
the data-parallel step, and a tiny run that is deterministic and resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_steps import assert_one_and_two_devices_agree, batch_2d, train_states
from unet_jax.errors import InputError
from unet_jax.io import checkpoint, data, runlog, stacks, synthetic
from unet_jax.network.model import build_model
from unet_jax.training import augment, consistency, trainer


def mean_teacher(config, unlabeled=("unused.tif",)):
  """`config` with the mean teacher on: weight 1 from the first step, an EMA teacher, pseudo-labels."""
  config.train.ema_decay = 0.9
  config.train.consistency_weight = 1.0
  config.train.consistency_rampup_steps = 0
  config.train.pseudo_label_threshold = 0.7
  config.train.unlabeled = tuple(unlabeled)
  return config


def test_consistency_is_zero_when_student_and_teacher_agree():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  assert float(consistency.consistency_loss(consistency.consistency_sums(logits, logits))) == 0.0
  other = consistency.consistency_sums(logits + 1.0, logits, "sigmoid", 0.6)
  assert float(consistency.consistency_loss(other)) > 0.0 and 0 < float(other["confident"]) <= logits.size
  classes = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  assert float(consistency.consistency_sums(classes, classes, "softmax")["squared"]) == 0.0


def test_the_student_view_is_moved_back_exactly():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)  # two 2D patches, 3 channels
  for i in range(8):
    index = jnp.array([i, (i + 3) % 8])
    moved = jax.vmap(lambda p, k: augment.dihedral(p, k, (0, 1)))(x, index)
    np.testing.assert_array_equal(consistency.to_teacher_frame(moved, index), x)
  volume = jnp.arange(3 * 4 * 4, dtype=jnp.float32).reshape(1, 3, 4, 4, 1)  # a 3D patch turns in (H, W)
  np.testing.assert_array_equal(consistency.to_teacher_frame(augment.dihedral(volume, 5, (2, 3)), jnp.array([5])),
                                volume)


def test_the_weight_ramps_up_to_its_value():
  assert float(consistency.rampup_weight(0, 2.0, 100)) == pytest.approx(2.0 * np.exp(-5.0))
  assert float(consistency.rampup_weight(50, 2.0, 100)) == pytest.approx(2.0 * np.exp(-1.25))
  assert float(consistency.rampup_weight(100, 2.0, 100)) == float(consistency.rampup_weight(900, 2.0, 100)) == 2.0
  assert float(consistency.rampup_weight(0, 2.0, 0)) == 2.0


def test_views_share_the_geometry_and_differ_by_photometry(tiny_config):
  augment.apply_preset(tiny_config, "none")
  tiny_config.train.consistency_noise = 0.0
  image = jnp.asarray(batch_2d(2)["image"])
  teacher, student, index = consistency.views(jax.random.split(jax.random.PRNGKey(0), 2), image, tiny_config)
  np.testing.assert_array_equal(teacher, image)  # nothing on: both views are the patch itself
  np.testing.assert_array_equal(student, image)
  assert not index.any()
  tiny_config.augment.flips, tiny_config.train.consistency_noise = True, 0.05
  teacher, student, index = consistency.views(jax.random.split(jax.random.PRNGKey(1), 2), image, tiny_config)
  back = consistency.to_teacher_frame(student, index)
  assert 0.0 < float(jnp.mean(jnp.abs(back - teacher))) < 0.1  # the same patch in one frame, apart from noise


def test_unlabeled_batches_depend_only_on_seed_step_and_example():
  stack = synthetic.make_stack(3, 4, (48, 48))[0].astype(np.float32) / 255.0
  samplers = consistency.make_samplers([stack, stack[:2]], (32, 32))
  run = consistency.unlabeled_batches(samplers, 4, seed=0, start_step=0)
  first = [next(run) for _ in range(3)]
  np.testing.assert_array_equal(next(consistency.unlabeled_batches(samplers, 4, 0, 2)), first[2])  # resumed
  halves = [next(consistency.unlabeled_batches(samplers, 4, 0, 1, p, 2)) for p in (0, 1)]  # two processes
  np.testing.assert_array_equal(np.concatenate(halves), first[1])
  assert first[0].shape == (4, 32, 32, 1) and not np.array_equal(first[0], first[1])


def test_unlabeled_stacks_must_exist_and_not_be_the_data_folders(tiny_config, tmp_path):
  image, mask = synthetic.make_stack(0, 2, (32, 32))
  for name, array in (("training.tif", image), ("training_groundtruth.tif", mask), ("testing.tif", image),
                      ("testing_groundtruth.tif", mask), ("other.tif", image)):
    stacks.write_stack(str(tmp_path / name), array)
  tiny_config.data.name, tiny_config.data.root = "folder", str(tmp_path)
  for name in ("training.tif", "testing.tif"):
    with pytest.raises(InputError, match="is a stack of data.root"):
      data.load_unlabeled([str(tmp_path / name)], tiny_config.data)
  with pytest.raises(InputError, match="does not exist"):
    data.load_unlabeled([str(tmp_path / "absent.tif")], tiny_config.data)
  (loaded,) = data.load_unlabeled([str(tmp_path / "other.tif")], tiny_config.data)
  np.testing.assert_allclose(loaded, image / 255.0, atol=1e-7)


def semi_batch() -> dict[str, np.ndarray]:
  """A labelled batch and 4 unlabelled patches of other synthetic slices."""
  return {**batch_2d(), "unlabeled": batch_2d(4, seed=5)["image"]}


@pytest.mark.slow
def test_identical_views_and_weights_give_zero_consistency_in_the_step(tiny_config):
  augment.apply_preset(mean_teacher(tiny_config), "none")
  tiny_config.train.pseudo_label_threshold = 0.0
  tiny_config.train.consistency_noise = 0.0
  (_, metrics), = train_states(tiny_config, semi_batch(), 1)  # before the first update the teacher is the student
  assert abs(float(metrics["consistency"])) < 1e-10 and np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_two_devices_match_one_with_the_mean_teacher(tiny_config):
  assert_one_and_two_devices_agree(mean_teacher(tiny_config), semi_batch(), steps=3)


@pytest.mark.slow
def test_mean_teacher_run_trains_is_deterministic_and_resumes_exactly(tiny_config, tmp_path):
  path = str(tmp_path / "unlabeled.tif")
  stacks.write_stack(path, synthetic.make_stack(11, 3, (64, 64))[0])
  mean_teacher(tiny_config, (path,))
  tiny_config.train.consistency_rampup_steps = 5
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  assert trainer.train_and_evaluate(tiny_config, straight)["step"] == 20
  assert trainer.train_and_evaluate(tiny_config, interrupted, on_eval=lambda step, _: step == 10)["step"] == 10
  assert trainer.train_and_evaluate(tiny_config, interrupted)["step"] == 20  # resumed from step 10
  target = trainer.state_tree(trainer.create_train_state(tiny_config, build_model(tiny_config.model),
                                                         jax.random.PRNGKey(0)))
  a, _ = checkpoint.restore(straight, target, "latest")
  b, _ = checkpoint.restore(interrupted, target, "latest")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  train, _ = runlog.read(runlog.log_path(straight))
  assert all(np.isfinite(r["loss"]) and r["consistency"] > 0 for r in train)
  assert train[-1]["loss"] < train[0]["loss"]
