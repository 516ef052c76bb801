"""The budgeted schedule: the learning rate as optax's, a measured step count that is logged and kept."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.io import checkpoint, runlog
from unet_jax.training import optim, trainer


def test_schedule_equals_optax_warmup_cosine():
  o = unet2d.get_config("vnc").optim
  reference = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, 1200,
                                                 o.learning_rate * o.final_lr_fraction)
  steps = np.array([0, 1, 50, 99, 100, 101, 600, 1199, 1200, 1500])
  np.testing.assert_allclose([optim.learning_rate(o, s, 1200) for s in steps], [reference(s) for s in steps],
                             rtol=1e-5, atol=1e-9)
  assert float(optim.learning_rate(o, 1200, 1200)) == pytest.approx(o.learning_rate * o.final_lr_fraction)
  o.schedule = "constant"
  assert float(optim.learning_rate(o, 500, 0)) == pytest.approx(o.learning_rate)


def test_adamw_equals_optax_adamw():
  o = unet2d.get_config("vnc").optim
  o.grad_clip = 0.0
  schedule = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, 300,
                                                o.learning_rate * o.final_lr_fraction)
  params = {"w": jnp.linspace(-1.0, 1.0, 6)}
  ours, theirs = optim.make_optimizer(o, 300), optax.adamw(schedule, weight_decay=o.weight_decay)
  s1, s2 = ours.init(params), theirs.init(params)
  for i in range(130):
    grads = {"w": jnp.sin(params["w"] * (i + 1))}
    u1, s1 = ours.update(grads, s1, params)
    u2, s2 = theirs.update(grads, s2, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=2e-5, atol=1e-10)
  assert optim.total_steps(s1) == 300 and optim.total_steps(optim.set_total_steps(s1, 77)) == 77


def test_budget_arithmetic():
  t = unet2d.get_config("tiny").train
  t.budget_minutes, t.eval_every = 10.0, 100
  # 8 minutes left, 40 s of them for the last validation; each step costs 2 s + a 40 s validation every 100
  # steps = 2.4 s: 440 / 2.4 = 183 more steps.
  assert trainer.budget_steps(t, 10, 2.0, 2.0, 40.0) == 193
  assert trainer.budget_steps(t, 10, 11.0, 2.0, 40.0) == 10  # over budget already: stop now


def test_the_budget_stops_a_slow_run_in_time_for_its_last_validation():
  t = unet2d.get_config("tiny").train
  t.budget_minutes = 10.0
  assert trainer.time_limit(t, 9.0, None) == ""  # its steps are not fixed yet: the timed steps run on
  assert trainer.time_limit(t, 9.0, 30.0) == ""
  assert trainer.time_limit(t, 9.5, 30.0).startswith("train.budget_minutes=10.0 spent")
  t.max_minutes = 9.0
  assert trainer.time_limit(t, 9.0, None) == "train.max_minutes=9.0 reached"
  t.budget_minutes = 0.0
  assert trainer.time_limit(t, 8.9, 0.0) == ""


def test_validations_during_training_may_use_a_cheaper_tta():
  e = unet2d.get_config("vnc").eval
  assert trainer.validation_settings(e) is e and e.tta == "dihedral"  # by default they validate as evaluate.py
  e.val_tta = "none"
  assert trainer.validation_settings(e).tta == "none" and e.tta == "dihedral"


def test_budget_needs_the_measured_steps_inside_the_warmup():
  config = unet2d.get_config("tiny")
  config.train.budget_minutes = 5.0
  with pytest.raises(InputError, match="warmup_steps .* >= train.budget_measure_steps"):
    config_check.validate(config)


def test_the_length_is_timed_again_at_the_end_of_the_warmup_when_it_leaves_room():
  config = unet2d.get_config("vnc")  # warm-up 70 steps, 10 timed steps
  assert trainer.refit_step(config, 0) == 70
  assert trainer.refit_step(config, 50) == 70  # its first timing ends at 60, leaving 10 steps to time again
  assert trainer.refit_step(config, 55) == 0  # too few left
  config.optim.warmup_steps = 19
  assert trainer.refit_step(config, 0) == 0  # fewer steps than the first timing
  config.optim.warmup_steps, config.train.budget_minutes = 70, 0.0
  assert trainer.refit_step(config, 0) == 0  # trained by step count


def test_the_length_is_refitted_at_each_validation_once_enough_steps_were_timed():
  t = unet2d.get_config("vnc").train  # a validation every 200 steps, 10 timed steps
  t.budget_retime = True
  assert trainer.retime_due(t, 200, 1100, (70, 0.0))
  assert not trainer.retime_due(t, 300, 1100, (200, 0.0))  # not a validation step
  assert not trainer.retime_due(t, 200, 200, (70, 0.0))  # the last step: nothing left to fit
  assert not trainer.retime_due(t, 200, 1100, (195, 0.0))  # 5 steps timed since the last fit: too few
  assert not trainer.retime_due(t, 200, 0, (70, 0.0))  # no length fixed yet
  t.budget_retime = False  # the default
  assert not trainer.retime_due(t, 200, 1100, (70, 0.0))


def test_a_step_count_run_replays_the_lengths_a_budgeted_run_logged():
  config = unet2d.get_config("vnc")
  assert trainer.schedule_length(config.train, 500) == config.train.steps == 3000
  config.train.budget_minutes, config.train.steps = 0.0, 1110
  config.train.schedule_lengths = ((10, 1082), (70, 1122), (200, 1110))
  config_check.validate(config)
  # Before the first fit only the warm-up's learning rates run, which no length changes.
  assert [trainer.schedule_length(config.train, s) for s in (0, 10, 69, 70, 199, 200, 1000)] == [
      1082, 1082, 1082, 1122, 1122, 1110, 1110]
  for lengths, steps in [(((10, 1082), (70, 1122)), 1110), (((70, 1122), (10, 1082)), 1082), (((10, 5),), 5)]:
    config.train.schedule_lengths, config.train.steps = lengths, steps
    with pytest.raises(InputError, match="train.schedule_lengths=.* replays a budgeted run"):
      config_check.validate(config)
  config.train.schedule_lengths, config.train.steps, config.train.budget_minutes = ((10, 50),), 50, 5.0
  with pytest.raises(InputError, match="with train.budget_minutes=0"):
    config_check.validate(config)


def assert_equals_the_run_of_steps(config, budgeted: str, total: int, by_steps: str, lengths=()) -> None:
  """The budgeted run in `budgeted` has the parameters and length of `config` trained for `total` steps (with the
  schedule `lengths` replayed)."""
  config.train.budget_minutes, config.train.steps, config.train.schedule_lengths = 0.0, total, tuple(lengths)
  trainer.train_and_evaluate(config, by_steps)
  target = jax.eval_shape(lambda: trainer.state_tree(trainer.create_train_state(
      config, trainer.build_model(config.model), jax.random.PRNGKey(0))))
  a, _ = checkpoint.restore(budgeted, target, "latest")
  b, _ = checkpoint.restore(by_steps, target, "latest")
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  assert optim.total_steps(a["opt_state"]) == optim.total_steps(b["opt_state"]) == total


@pytest.mark.slow
def test_a_refitted_run_logs_its_lengths_and_equals_the_step_count_run_replaying_them(tiny_config, tmp_path):
  """The run fits its length after its first timed steps, again at the warm-up's end and at each validation; each
  fit changes only the learning rates still to come, so the run equals, bit for bit, a step-count run that replays
  the logged lengths."""
  tiny_config.train.budget_minutes = 0.3
  tiny_config.train.budget_retime = True
  tiny_config.train.budget_measure_steps = 3
  tiny_config.optim.warmup_steps = 8
  tiny_config.train.eval_every = tiny_config.train.checkpoint_every = 10
  budgeted = str(tmp_path / "budget")
  trainer.train_and_evaluate(tiny_config, budgeted)
  events = [r for r in runlog.records(runlog.log_path(budgeted)) if r.get("event") == "budget"]
  steps = [e["step"] for e in events]
  assert steps[:2] == [3, 8] and len(steps) > 2 and all(s % 10 == 0 for s in steps[2:]), steps
  assert steps[2] == 20  # 2 steps timed since the warm-up's end at step 10: too few
  total = events[-1]["total_steps"]
  tiny_config.train.budget_minutes = 30.0  # resumed (to its length, if a slowdown stopped it short): no more timing
  assert trainer.train_and_evaluate(tiny_config, budgeted)["step"] == total
  assert [r.get("event") for r in runlog.records(runlog.log_path(budgeted))].count("budget") == len(events)
  assert_equals_the_run_of_steps(tiny_config, budgeted, total, str(tmp_path / "steps"),
                                 [(e["step"], e["total_steps"]) for e in events])


@pytest.mark.slow
def test_budgeted_run_logs_its_length_keeps_it_and_is_reproducible(tiny_config, tmp_path):
  tiny_config.train.budget_minutes = 0.4
  tiny_config.train.budget_measure_steps = 3
  tiny_config.optim.warmup_steps = 3
  tiny_config.train.eval_every = tiny_config.train.checkpoint_every = 10
  budgeted = str(tmp_path / "budget")
  first = trainer.train_and_evaluate(tiny_config, budgeted)
  events = [r for r in runlog.records(runlog.log_path(budgeted)) if r.get("event") == "budget"]
  assert len(events) == 1 and events[0]["step"] == 3
  total = events[0]["total_steps"]
  assert 3 <= first["step"] <= total  # short of it only if the steps slowed down and the budget ran out
  tiny_config.train.budget_minutes = 30.0  # resumed: the logged length stands (reached now, if not before)
  assert trainer.train_and_evaluate(tiny_config, budgeted)["step"] == total
  assert [r.get("event") for r in runlog.records(runlog.log_path(budgeted))].count("budget") == 1
  # The same run by step count (the logged number) gives the same parameters, bit for bit.
  assert_equals_the_run_of_steps(tiny_config, budgeted, total, str(tmp_path / "steps"))


@pytest.mark.slow
def test_a_budgeted_run_ends_on_time(tiny_config, tmp_path):
  """Loading, compiling and validating count in the budget; the run stops in time for its last validation."""
  tiny_config.train.budget_minutes = 0.01  # a few steps: fills the compilation cache
  tiny_config.train.budget_measure_steps = 3
  tiny_config.optim.warmup_steps = 3
  tiny_config.train.eval_every = tiny_config.train.checkpoint_every = 50
  tiny_config.train.log_every = 50
  assert trainer.train_and_evaluate(tiny_config, str(tmp_path / "compile"))["step"] == 3
  tiny_config.train.budget_minutes = 1.0
  start = time.time()
  result = trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  wall = time.time() - start
  assert 30.0 < wall <= 60.0 + 6.0, (wall, result["step"])  # within 10 % of it, and not far short
