"""Training: train state, the pure data-parallel train step, validation, and the loop."""

import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from unet_jax.errors import InputError
from unet_jax.inference.predictor import choose_threshold, is_package, Predictor
from unet_jax.io import checkpoint, data, outputs, runlog
from unet_jax.network import anisotropy, volumes
from unet_jax.network.model import abstract_variables, build_model, UNet
from unet_jax.scores import classes, metrics
from unet_jax.training import augment, consistency, losses, optim, parallel, sampling, summaries


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm running statistics and, with train.ema_decay > 0, optax.ema's state
  of the parameters (None otherwise) and its decay."""
  batch_stats: Any
  ema: Any = None
  ema_decay: float = struct.field(pytree_node=False, default=0.0)


OnEval = Callable[[int, dict[str, float]], bool]  # (step, validation scores) -> stop the run now


def averaged_params(state: TrainState) -> Any:
  """The weights to validate, checkpoint and run: with an EMA, its bias-corrected average of the
  parameters over the steps taken (count >= 1), else the parameters."""
  if state.ema is None:
    return state.params
  return optax.tree_utils.tree_bias_correction(state.ema.ema, state.ema_decay, state.ema.count)


def teacher_params(state: TrainState) -> Any:
  """The mean teacher (unet_jax/training/consistency.py): the EMA's average, or the parameters before the
  first step, when there is no average yet."""
  ema = state.ema._replace(count=jnp.maximum(state.ema.count, 1))
  return jax.tree.map(lambda average, p: jnp.where(state.ema.count > 0, average, p),
                      averaged_params(state.replace(ema=ema)), state.params)


def patch_shape(config: Any) -> tuple[int, ...]:
  """The training patch shape: patch_size repeated model.ndim times (or given per axis)."""
  size = config.train.patch_size
  return tuple(size) if isinstance(size, (tuple, list)) else (size,) * config.model.ndim


def create_train_state(config: Any, model: UNet, key: jax.Array) -> TrainState:
  """Initialises parameters from `key` for patches of the configured shape."""
  dummy = jnp.zeros((1, *patch_shape(config), model.in_channels), jnp.float32)
  variables = jax.jit(build_model(config.model).init, static_argnames="train")(key, dummy, train=False)
  decay = config.train.ema_decay
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}),
                           tx=optim.make_optimizer(config.optim, 0 if config.train.budget_minutes else config.train.steps),
                           ema=optax.ema(decay).init(variables["params"]) if decay else None, ema_decay=decay)


def initial_variables(config: Any, model: UNet) -> dict[str, Any]:
  """The variables {'params', 'batch_stats'} of `train.init_from` (a workdir's `eval.checkpoint`, or a package
  made by export.py: its .zip or unpacked folder), checked leaf by leaf against `model`'s shapes, so
  fine-tuning starts from them."""
  source = config.train.init_from
  wanted = abstract_variables(model)
  try:
    if is_package(source):
      found = Predictor.from_package(source).variables
    else:
      found, _ = checkpoint.restore_variables(source, wanted, config.eval.checkpoint)
  except InputError as e:
    raise InputError(f"train.init_from={source!r}: {e}") from None
  found = {"params": found["params"], "batch_stats": found.get("batch_stats", {})}
  wanted = {"params": wanted["params"], "batch_stats": wanted.get("batch_stats", {})}
  have = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(found)[0]}
  need = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(wanted)[0]}
  for name in sorted(set(have) | set(need)):
    if have.get(name) != need.get(name):
      raise InputError(f"train.init_from={source!r} does not fit the configured model: {name} is "
                       f"{have.get(name, 'absent')} there, {need.get(name, 'absent')} here; use the model.* "
                       "settings it was trained with")
  return jax.tree.map(lambda v, w: jnp.asarray(v, w.dtype), found, wanted)


def state_tree(state: TrainState) -> dict[str, Any]:
  """The checkpointed part of a TrainState. 'params' are always the weights to run (what
  checkpoint.restore_variables reads): with an EMA, its average, the trained ones then in 'train_params'."""
  tree = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state, "step": state.step}
  if state.ema is not None:
    tree.update(params=averaged_params(state), train_params=state.params, ema=state.ema)
  return tree


def from_state_tree(state: TrainState, tree: dict[str, Any]) -> TrainState:
  """`state` with the values of a restored `state_tree`."""
  tree = dict(tree)
  tree["params"] = tree.pop("train_params", tree["params"])
  return state.replace(**tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], keys: jax.Array,
               unlabeled_keys: jax.Array | None = None,
               *, config: Any, axis_name: str | None = parallel.AXIS) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on the global batch, of which this device holds a shard.

  batch: {'image', 'mask'}: f32[B, *patch, 1]; keys: one PRNG key per example (augmentation, which also
  gives each pixel its loss weight: 0 on a blanked section; times 1 + train.boundary_weight near the edges of
  the augmented mask, `losses.boundary_weights`). Mean teacher (train.consistency_weight > 0):
  batch['unlabeled'] f32[U, *patch, C] and `unlabeled_keys`, one per unlabelled example (its two views), add
  the weighted consistency loss of unet_jax/training/consistency.py.
  The loss is a function of batch sums (unet_jax/training/losses.py): the shards' sums are added over
  `axis_name`, and the gradient is the sum over devices of each shard's vector-Jacobian product
  with d loss / d sums, i.e. exactly the single-device gradient of the global batch.
  """
  multi_class = config.model.get("num_classes", 1) > 1
  class_weights = tuple(float(w) for w in config.train.get("class_weights", ()))
  if multi_class:  # class ids: augmented as integers (nearest), never interpolated
    batch = {**batch, "mask": batch["mask"].astype(jnp.int32)}
  image, mask, weight = augment.augment_batch_with_weights(keys, batch["image"], batch["mask"], config.augment)
  if config.train.boundary_weight:  # binary models (config check)
    weight = weight * losses.boundary_weights(mask, config.train.boundary_width, config.train.boundary_weight)
  loss_fn = losses.get_loss(config.train.loss)
  if multi_class:  # a mean over the classes, weighted by train.class_weights
    loss_fn = functools.partial(loss_fn, weights=class_weights)
  if unlabeled_keys is not None:  # the teacher's view is predicted once, outside the differentiated function
    teacher_view, student_view, flips = consistency.views(unlabeled_keys, batch["unlabeled"], config)
    teacher_logits, _ = state.apply_fn({"params": teacher_params(state), "batch_stats": state.batch_stats},
                                       teacher_view, train=True, mutable=["batch_stats"])

  def shard_sums(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(variables, image, train=True, mutable=["batch_stats"])
    if multi_class:
      sums = {"labeled": losses.class_sums(logits, mask, config.model.output, class_weights)}
    else:
      sums = {"labeled": losses.batch_sums(logits, mask, weight)}
    if unlabeled_keys is not None:  # BatchNorm statistics are updated from the labelled batch only
      student_logits, _ = state.apply_fn(variables, student_view, train=True, mutable=["batch_stats"])
      sums["unlabeled"] = consistency.consistency_sums(consistency.to_teacher_frame(student_logits, flips),
                                                       teacher_logits, config.model.output,
                                                       config.train.pseudo_label_threshold)
    return sums, updates

  def objective(s: dict[str, losses.Sums]) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss = loss_fn(s["labeled"], config.train.smooth)
    if "unlabeled" not in s:
      return loss, {"loss": loss}
    unsupervised = consistency.consistency_loss(s["unlabeled"])
    weight = consistency.rampup_weight(state.step, config.train.consistency_weight,
                                       config.train.consistency_rampup_steps)
    return loss + weight * unsupervised, {"loss": loss, "consistency": unsupervised}

  sums, pullback, updates = jax.vjp(shard_sums, state.params, has_aux=True)
  batch_stats = updates.get("batch_stats", {})
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  (total, step_metrics), dloss_dsums = jax.value_and_grad(objective, has_aux=True)(sums)
  (grads,) = pullback(dloss_dsums)
  if axis_name is not None:
    grads = jax.lax.psum(grads, axis_name)
    batch_stats = jax.lax.pmean(batch_stats, axis_name)  # equal already (synchronised BatchNorm)
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema is not None:
    updated = updated.replace(ema=optax.ema(state.ema_decay).update(updated.params, state.ema)[1])
  finite = jnp.isfinite(total) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  # A non-finite step changes nothing but the step count, so no NaN ever reaches a saved state.
  state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state.replace(step=updated.step))
  return state, {**step_metrics, "nonfinite": 1 - finite.astype(jnp.int32)}


def make_parallel_train_step(mesh: Any, config: Any):
  """`train_step` under shard_map over the mesh's 'batch' axis, jitted, state donated.

  Per-example augmentation keys (and the unlabelled examples' view keys, from the step key folded with
  consistency.STREAM) are split from one key over the global batch, so results do not depend on the
  number of devices.
  """
  semi = config.train.consistency_weight > 0
  body = functools.partial(train_step, config=config)
  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), *[P(parallel.AXIS)] * (3 if semi else 2)),
                          out_specs=(P(), P()), check_vma=False)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
    keys = jax.random.split(key, batch["image"].shape[0])
    if not semi:
      return sharded(state, batch, keys)
    unlabeled_keys = jax.random.split(jax.random.fold_in(key, consistency.STREAM), batch["unlabeled"].shape[0])
    return sharded(state, batch, keys, unlabeled_keys)
  return step


def validation_settings(eval_config: Any) -> Any:
  """`config.eval` for the validations during training: its TTA is `eval.val_tta` when set (e.g. 'none', 8x
  cheaper than 'dihedral', leaving more of a budget to training); evaluate.py keeps `eval.tta`."""
  if not eval_config.get("val_tta", ""):
    return eval_config
  settings = eval_config.copy_and_resolve_references()
  settings.tta = eval_config.val_tta
  return settings


def evaluate_split(model: UNet, variables: Any, split: data.Split, eval_config: Any) -> dict[str, float]:
  """Pixel scores of the thresholded prediction of a whole split."""
  return score_split(model, variables, split, eval_config)[0]


def score_split(model: UNet, variables: Any, split: data.Split,
                eval_config: Any) -> tuple[dict[str, float], np.ndarray]:
  """(pixel scores of the thresholded prediction, probabilities f32[Z, H, W]) of a whole split, through the
  predictor evaluation uses (`Predictor.create`). With `eval.select_threshold` the threshold is the
  candidate of best Dice on this split (the val split: checkpoints are then chosen as evaluate.py scores
  them), and the scores hold it as 'threshold'. A K-class model is scored on its argmax label map: mean and
  per-class Dice/IoU (scores.classes.flat_scores), probabilities f32[Z, H, W, K]."""
  predictor = Predictor.create(model, variables, eval_config)
  probs = predictor.raw_probabilities(split.image)
  if model.num_classes > 1:
    return classes.flat_scores(classes.class_scores(predictor.label_map(probs), split.mask, model.num_classes)), probs
  threshold = choose_threshold(eval_config, probs, split.mask)["value"]
  scores = metrics.pixel_scores(probs >= threshold, split.mask)
  return ({**scores, "threshold": threshold} if eval_config.select_threshold else scores), probs


def budget_steps(train_config: Any, done: int, minutes_used: float, seconds_per_step: float,
                 seconds_per_validation: float) -> int:
  """The run's total steps under `train.budget_minutes`: as many as the time left allows, with a validation every
  train.eval_every steps and one more at the end."""
  left = 60.0 * (train_config.budget_minutes - minutes_used) - seconds_per_validation
  per_step = seconds_per_step + seconds_per_validation / train_config.eval_every
  return done + max(0, int(left / per_step))


def check_finite(nonfinite_steps: int, step: int, ckpt: checkpoint.Checkpoints, workdir: str) -> None:
  """Stops the run, saving nothing more, once any step had a non-finite loss or gradient."""
  if nonfinite_steps:
    last = ckpt.latest.latest_step()
    resume = f"it resumes from the last saved (finite) step {last}" if last else "it starts again"
    raise InputError(f"the loss or its gradient became NaN or infinite ({nonfinite_steps} step(s) up to step {step} "
                     f"were skipped, nothing non-finite was saved); lower optim.learning_rate (or raise "
                     f"train.smooth) and rerun with --workdir={workdir}: {resume}")


def fix_budget(config: Any, state: TrainState, timed_from: tuple[int, float], done: int, elapsed: Callable[[], float],
               eval_model: UNet, val: data.Split, seconds_per_validation: float | None,
               paused: float = 0.0) -> tuple[int, float, float]:
  """(the total steps that fit train.budget_minutes, the seconds of one step, of one validation), from the step
  time since `timed_from` (step, time), less the `paused` seconds validations took meanwhile, and the validation's
  seconds, or (None) a validation timed on its second run (the first compiles, which the minutes used so far then
  hold); the total is decided by process 0 and shared, so every process stops at the same step."""
  jax.block_until_ready(state)
  seconds_per_step = (time.time() - timed_from[1] - paused) / (done - timed_from[0])
  if seconds_per_validation is None:
    variables = parallel.local_replica({"params": state.params, "batch_stats": state.batch_stats})
    evaluate_split(eval_model, variables, val, validation_settings(config.eval))
    start = time.time()
    evaluate_split(eval_model, variables, val, validation_settings(config.eval))
    seconds_per_validation = time.time() - start
  total = budget_steps(config.train, done, elapsed(), seconds_per_step, seconds_per_validation)
  if jax.process_count() > 1:
    total = int(multihost_utils.broadcast_one_to_all(np.int32(total)))
  return total, seconds_per_step, seconds_per_validation


def refit_step(config: Any, start: int) -> int:
  """The step at which a budgeted run starting at `start` times its steps again (0: never): the end of the warm-up,
  whose learning rates do not depend on the length, so the steps already taken stay what they were. The first few
  timed steps misjudge the run's speed either way. On the project's 2-core CPU, one 10-minute VNC run fixed 187
  steps from them, ran 2.43-2.59 s per step afterwards and trained 8.5 of its 10 minutes. Another timed 3.02 s per
  step at first and 3.21 s over the next 60 steps. The longer second timing fits the length to the run's real
  speed. There is a second timing only when the warm-up leaves as many steps to time again."""
  after_first = start + config.train.budget_measure_steps
  return config.optim.warmup_steps if config.train.budget_minutes and (
      config.optim.warmup_steps >= after_first + config.train.budget_measure_steps) else 0


def retime_due(train_config: Any, done: int, total: int, timed_from: tuple[int, float]) -> bool:
  """Whether a budgeted run times its steps again after step `done` and refits its length to the minutes left
  (train.budget_retime): at each validation step before its last, once enough steps were timed since the last fit.
  The speed drifts during a run: on the project's 2-core CPU, a 10-minute VNC run fitted at the warm-up's end
  trained 8.8 of its 10 minutes, another ran 9 % slower than timed and stopped 79 steps short of its schedule."""
  return bool(train_config.budget_retime and total and done < total and done % train_config.eval_every == 0
              and done - timed_from[0] >= train_config.budget_measure_steps)


def schedule_length(train_config: Any, step: int) -> int:
  """The schedule's length after `step` steps of a step-count run: train.steps, or the length a budgeted run had
  fixed by then when train.schedule_lengths replays it (during the warm-up, before its first fit, the length
  changes no learning rate)."""
  lengths = [tuple(p) for p in train_config.schedule_lengths]
  fixed = [n for s, n in lengths if s <= step]
  return fixed[-1] if fixed else lengths[0][1] if lengths else train_config.steps


def time_limit(train_config: Any, minutes: float, reserve_seconds: float | None) -> str:
  """The time limit a run `minutes` long has reached ('' if none): train.max_minutes, or train.budget_minutes
  less `reserve_seconds` for the last validation (None: the budget's steps are not fixed yet)."""
  if train_config.max_minutes and minutes >= train_config.max_minutes:
    return f"train.max_minutes={train_config.max_minutes} reached"
  if train_config.budget_minutes and reserve_seconds is not None and (
      60.0 * minutes + reserve_seconds >= 60.0 * train_config.budget_minutes):
    return f"train.budget_minutes={train_config.budget_minutes} spent (less the last validation)"
  return ""


def train_and_evaluate(config: Any, workdir: str, on_eval: OnEval | None = None) -> dict[str, Any]:
  """Trains in `workdir` (resuming from its latest checkpoint); returns the last validation scores.

  `on_eval(step, scores)` is called after each validation (and its checkpoint); True stops the run
  there (a sweep's pruner, unet_jax/tuning/sweeps.py). The logged minutes, which `train.budget_minutes` and
  `train.max_minutes` limit, start here: loading, initialising and compiling count.
  """
  clock = time.time()
  print(anisotropy.describe(build_model(config.model).plan(), config.data.voxel_size_nm))
  mesh = parallel.make_mesh()
  if config.train.batch_size % mesh.size:
    raise InputError(f"train.batch_size={config.train.batch_size} must be a multiple of the {mesh.size} "
                     "devices; change it or --config.host_devices")
  semi = config.train.consistency_weight > 0  # mean teacher on unlabelled stacks
  if semi and config.train.unlabeled_batch % mesh.size:
    raise InputError(f"train.unlabeled_batch={config.train.unlabeled_batch} must be a multiple of the {mesh.size} "
                     "devices; change it or --config.host_devices")
  outputs.check_writable(workdir, "work folder")
  lock = outputs.lock_workdir(workdir) if jax.process_index() == 0 else None  # held until the process ends
  splits = data.load_splits(config.data, config.model.get("num_classes", 1))
  data.warn_if_empty(splits)
  volumes.check_splits(config, splits)
  sampler = sampling.PatchSampler.create(splits["train"], patch_shape(config), config.train.fg_fraction,
                                         config.model.context_slices, config.train.get("class_sampling", ()))
  unlabeled = consistency.make_samplers(data.load_unlabeled(config.train.unlabeled, config.data), patch_shape(config),
                                        config.model.context_slices) if semi else []
  eval_model = build_model(config.model)
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = create_train_state(config, build_model(config.model, parallel.AXIS), init_key)
  ckpt = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints)
  restored = ckpt.restore_latest(state_tree(state))
  if restored is not None:
    state = from_state_tree(state, restored)
  elif config.train.init_from:  # fine-tuning; a resumed run goes on from its own checkpoint instead
    variables = initial_variables(config, eval_model)  # the optimiser's and EMA's zero state fits them as is
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  start = int(state.step)
  primary = jax.process_index() == 0  # with several processes, process 0 logs
  log = runlog.MetricLog(workdir, enabled=primary)
  tensorboard = summaries.Summaries(workdir, enabled=primary and config.train.tensorboard)
  started_from = {"init_from": config.train.init_from} if restored is None and config.train.init_from else {}
  log.write({"event": "start", "step": start, "devices": mesh.size, "platform": jax.default_backend(),
             "minutes": log.minutes, "voxel_size_nm": [float(v) for v in config.data.voxel_size_nm], **started_from})
  replay = {} if config.train.budget_minutes else dict(tuple(p) for p in config.train.schedule_lengths)
  if not config.train.budget_minutes:  # step-count training: train.steps (a resumed run may be extended)
    state = state.replace(opt_state=optim.set_total_steps(state.opt_state, schedule_length(config.train, start)))
  # The run's last step: train.steps, or a budgeted run's length once it has measured its speed (0 until then)
  total = optim.total_steps(state.opt_state) if config.train.budget_minutes else config.train.steps
  state = parallel.replicate(mesh, state)
  step_fn = make_parallel_train_step(mesh, config)
  batches = sampling.batches(sampler, config.train.batch_size, config.seed, start, jax.process_index(),
                             jax.process_count())
  if semi:
    batches = ({**b, "unlabeled": u} for b, u in zip(batches, consistency.unlabeled_batches(
        unlabeled, config.train.unlabeled_batch, config.seed, start, jax.process_index(), jax.process_count())))
  batches = sampling.prefetch(batches, config.train.prefetch)
  validation = validation_settings(config.eval)
  minutes0, scores, nonfinite = log.minutes, {}, 0
  elapsed = lambda: minutes0 + (time.time() - clock) / 60.0
  bar = tqdm(initial=start, total=total or None, desc="train", disable=not primary)
  timed_from, step = None, start  # (step, time) the next budget timing counts from
  reserve = 0.0 if total else None  # seconds kept for the last validation; None until a budget is fixed
  fits = not total  # a budgeted run fits its length; a resumed one keeps the length it logged
  refit_at = refit_step(config, start) if fits else 0
  paused, validation_seconds, lengths = 0.0, None, []  # validation seconds since timed_from; the last one's; fits
  while not total or step < total:
    batch = parallel.shard_batch(mesh, next(batches))
    state, step_metrics = step_fn(state, batch, jax.random.fold_in(aug_key, step))
    nonfinite = nonfinite + step_metrics["nonfinite"]  # summed on the device; read at log and save steps
    done, step = step + 1, step + 1
    bar.update()
    if fits and done == start + 1:  # compiled: time the next train.budget_measure_steps - 1 steps
      jax.block_until_ready(state)
      timed_from = (done, time.time())
    first_fix = not total and done == start + config.train.budget_measure_steps
    refit = fits and bool(total) and (done == refit_at or retime_due(config.train, done, total, timed_from))
    length = replay.get(done)  # a step-count run replaying a budgeted one's lengths
    if first_fix or refit:  # refits: the end of the warm-up, then each validation, timed since the last fit
      total, seconds_per_step, reserve = fix_budget(config, state, timed_from, done, elapsed, eval_model,
                                                    splits["val"], validation_seconds or reserve, paused)
      timed_from, paused, length = (done, time.time()), 0.0, total  # after the validations fix_budget timed
      lengths.append((done, total))
      log.write({"event": "budget", "step": done, "total_steps": total, "minutes": elapsed(),
                 "seconds_per_step": seconds_per_step, "seconds_per_validation": reserve})
      bar.total = total
      if first_fix:
        again = ", timed again at the end of the warm-up" if refit_at else ""
        again += " and at each validation" if config.train.budget_retime else ""
        bar.write(f"train.budget_minutes={config.train.budget_minutes}: {total} steps in all{again} (logged; a "
                  "resumed run keeps the last)")
    if length:
      state = parallel.replicate(mesh, state.replace(opt_state=optim.set_total_steps(state.opt_state, length)))
    limit = "" if done == total else time_limit(config.train, elapsed(), reserve)
    out_of_time = bool(limit)
    if jax.process_count() > 1:  # all must stop at the same step: process 0 decides, at log steps
      out_of_time = done % config.train.log_every == 0 and bool(
          multihost_utils.broadcast_one_to_all(np.array(out_of_time)))
    last = done == total or out_of_time
    saving = done % config.train.eval_every == 0 or done % config.train.checkpoint_every == 0 or last
    if done % config.train.log_every == 0 or saving:
      check_finite(int(nonfinite), done, ckpt, workdir)
    if done % config.train.log_every == 0 or last:
      loss = float(step_metrics["loss"])
      extra = {"consistency": float(step_metrics["consistency"])} if semi else {}
      bar.set_postfix(loss=f"{loss:.4f}")
      log.write({"step": done, "loss": loss, **extra, "minutes": elapsed()})
      tensorboard.scalars(done, {"loss": loss, **extra,
                                 "learning_rate": optim.learning_rate(config.optim, done - 1, total)}, "train")
    if done % config.train.eval_every == 0 or last:
      began = time.time()
      variables = parallel.local_replica({"params": averaged_params(state), "batch_stats": state.batch_stats})
      scores, probs = score_split(eval_model, variables, splits["val"], validation)
      log.write({"step": done, "minutes": elapsed(), **{f"val_{k}": v for k, v in scores.items()}})
      tensorboard.scalars(done, scores, "val")
      if probs.ndim == splits["val"].mask.ndim:  # binary; class maps have no picture yet
        tensorboard.slices(done, splits["val"].image, splits["val"].mask, probs)
      bar.write(f"step {done}: val dice {scores['dice']:.4f} ({elapsed():.1f} min)")
      ckpt.save(done, state_tree(state), scores["dice"])
      validation_seconds = time.time() - began
      paused += validation_seconds
      if on_eval is not None and on_eval(done, scores):
        bar.write(f"stopping at step {done}: asked to after this validation")
        break
    elif done % config.train.checkpoint_every == 0:
      ckpt.save(done, state_tree(state))
    if out_of_time:
      log.write({"event": "stopped", "step": done, "total_steps": total, "reason": limit or "process 0's time limit",
                 "minutes": elapsed()})
      bar.write(f"stopping at step {done}: {limit or 'process 0 reached a time limit'}")
      break
  bar.close()
  if lengths and primary:
    replayed = f" --config.train.schedule_lengths='{tuple(lengths)}'" if len(lengths) > 1 else ""
    print(f"the same schedule by step count: --config.train.budget_minutes=0 --config.train.steps={total}{replayed}")
  tensorboard.close()
  ckpt.close()
  del lock
  return {"step": int(state.step), **scores}
