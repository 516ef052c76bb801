"""Hyperparameter sweeps on Optuna: TPE sampling, median pruning on validation Dice, a shared study.

Every trial is an ordinary training run in `<workdir>/trial_<n>` (trainer.train_and_evaluate with
the sampled overrides, unet_jax/tuning/search_space.py); its value is the best validation Dice in its
log, the split that selects checkpoints, never the test split. Each validation is reported to the
pruner, which may stop the trial there (state PRUNED).

The study lives in an SQL database (`sqlite:///<workdir>/study.db` unless `storage` names another),
so a rerun resumes it, and several processes or machines pointed at one storage URL share it: each
runs trials until the study holds `trials` finished (complete or pruned) ones. A process that dies
mid-trial stops its heartbeat; `stale_seconds` later the trial is marked FAIL and Optuna's
RetryHeartbeatStaleTrialCallback enqueues it again with the same parameters (at once on Ctrl-C), and
the retry trains in the same folder, so it resumes from that trial's last checkpoint. Trials that fail on bad input
(InputError: a non-finite loss, an invalid combination of values) are marked FAIL with the message
and the sweep goes on; three in a row stop it.
"""

import os
import warnings

import ml_collections
import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.io import runlog
from unet_jax.training import trainer
from unet_jax.tuning import search_space, sweep_report

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PRUNERS = ("median", "none")
FAILURES_IN_A_ROW = 3  # consecutive failed trials that stop a sweep (the input, not the parameters, is wrong)
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True)  # same params, same folder



def default_storage(workdir: str) -> str:
  """The sweep folder's SQLite database."""
  return f"sqlite:///{os.path.abspath(os.path.join(workdir, 'study.db'))}"


def make_pruner(name: str, startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
  """'median': prune a trial whose validation Dice is below the median of earlier trials' at that step,
  once `startup_trials` trials have finished and after `warmup_steps` steps; 'none': never."""
  if name not in PRUNERS:
    raise InputError(f"--pruner={name!r} is invalid: it must be one of {PRUNERS}")
  if name == "none":
    return optuna.pruners.NopPruner()
  return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)


def open_study(storage_url: str, study_name: str, seed: int, pruner: optuna.pruners.BasePruner,
               stale_seconds: int) -> optuna.Study:
  """The study `study_name` in `storage_url`, created or loaded, with a TPE sampler seeded by (`seed`, the
  number of trials it holds): a run from scratch is reproducible, and a resumed or second process does
  not draw its predecessor's first samples again (constant_liar keeps concurrent trials apart too)."""
  storage = optuna.storages.RDBStorage(
      storage_url, heartbeat_interval=max(1, stale_seconds // 4), grace_period=stale_seconds,
      heartbeat_stale_trial_callback=RETRY)
  study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                              pruner=pruner)
  sampler_seed = int(np.random.SeedSequence([seed, len(study.get_trials(deepcopy=False))]).generate_state(1)[0])
  study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
  return study


def check_space_matches(study: optuna.Study, space: search_space.Space) -> None:
  """A resumed study must keep its distributions: Optuna cannot compare trials sampled from others."""
  for t in study.get_trials(deepcopy=False, states=FINISHED):
    for name, d in t.distributions.items():
      if name in space and space[name] != d:
        raise InputError(f"study {study.study_name!r} sampled {name} from {d} in trial {t.number}, the space file "
                         f"now says {space[name]}; keep the space or give another --study_name or --workdir")


def _frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
  return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def trial_workdir(study: optuna.Study, trial: optuna.Trial, workdir: str) -> str:
  """`<workdir>/trial_<n>`, n the trial's number, or for a retry the number of the trial it retries."""
  history = RetryHeartbeatStaleTrialCallback.retry_history(_frozen(study, trial))
  return os.path.join(workdir, f"trial_{history[0] if history else trial.number}")


def objective(config: ml_collections.ConfigDict, space: search_space.Space, workdir: str, study: optuna.Study):
  """The function of a trial that Optuna maximises: trains, reports each validation, returns the best Dice."""
  def run_trial(trial: optuna.Trial) -> float:
    folder = trial_workdir(study, trial, workdir)
    trial.set_user_attr("workdir", folder)
    pruned_at = []

    def on_eval(step: int, scores: dict[str, float]) -> bool:
      trial.report(scores["dice"], step)
      if trial.should_prune():
        pruned_at.append(step)
      return bool(pruned_at)

    try:
      trial_config = search_space.configure(config, search_space.suggest(trial, space))
      config_check.validate(trial_config)
      trainer.train_and_evaluate(trial_config, folder, on_eval)
    except InputError as e:
      trial.set_user_attr("error", str(e))
      raise
    except KeyboardInterrupt:  # Optuna marks it FAIL; the next run resumes it, as a crashed trial
      RETRY(study, _frozen(study, trial))
      raise
    path = runlog.log_path(folder)
    _, validations = runlog.read(path)
    trial.set_user_attr("steps", validations[-1]["step"])
    trial.set_user_attr("minutes", round(max(runlog.minutes_by_step(path).values()), 2))
    if pruned_at:
      raise optuna.TrialPruned(f"validation Dice below the median at step {pruned_at[0]}")
    return max(r["val_dice"] for r in validations)
  return run_trial


def run_sweep(config: ml_collections.ConfigDict, space: search_space.Space, workdir: str, trials: int,
              storage: str = "", study_name: str = "sweep", pruner: str = "median", pruner_startup_trials: int = 3,
              pruner_warmup_steps: int = 0, stale_seconds: int = 120, enqueue_base: bool = False) -> optuna.Study:
  """Runs trials until the study holds `trials` finished ones; writes the table and plots to `workdir`.
  `enqueue_base`: a new study's first trial is the base config's own recipe (search_space.base_params),
  the incumbent every sampled trial is compared with."""
  os.makedirs(workdir, exist_ok=True)
  failures = []

  def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    sweep_report.write(study, workdir)
    failures[:] = failures + [trial] if trial.state == TrialState.FAIL else []
    if len(failures) >= FAILURES_IN_A_ROW:
      study.stop()

  with warnings.catch_warnings():  # heartbeats, retries and plots are marked experimental in Optuna
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study = open_study(storage or default_storage(workdir), study_name, config.seed,
                       make_pruner(pruner, pruner_startup_trials, pruner_warmup_steps), stale_seconds)
    check_space_matches(study, space)
    if enqueue_base and not study.get_trials(deepcopy=False):
      study.enqueue_trial(search_space.base_params(config, space), user_attrs={"base": True})
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < trials:
      study.optimize(objective(config, space, workdir, study), catch=(InputError,),
                     callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED), after_trial])
    sweep_report.write(study, workdir)
  if len(failures) >= FAILURES_IN_A_ROW:
    raise InputError(f"{FAILURES_IN_A_ROW} trials in a row failed, the last (trial {failures[-1].number}) with: "
                     f"{failures[-1].user_attrs.get('error', 'see the log above')}")
  return study
