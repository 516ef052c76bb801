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
and the sweep goes on; three in a row stop it. Optuna's log of a failed trial keeps its one line and
loses its traceback.

The budget holds across processes: before a process starts a trial it counts the finished and the
running trials of the study (a dead process's trial once its heartbeat is stale no longer runs) and
starts one only below `trials`; count and start (and the study's creation) are one step under a lock
file beside an SQLite storage (`.<name>.lock`; for a database server, in the sweep folder, so processes sharing a server
from several folders can overshoot by one trial each when they start in the same instant).

A storage that cannot serve (a damaged or foreign study.db, a folder in its place, a folder that does
not exist, an unknown URL scheme or a missing driver) stops the sweep before anything is written, in
one line naming the storage.
"""

import contextlib
import fcntl
import logging
import os
import sqlite3
import warnings
from typing import Iterator

import ml_collections
import numpy as np
import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.io import outputs, runlog
from unet_jax.training import trainer
from unet_jax.tuning import ctrl_c, search_space, sweep_report

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (*FINISHED, TrialState.RUNNING)  # trials the budget counts
PRUNERS = ("median", "none")
FAILURES_IN_A_ROW = 3  # consecutive failed trials that stop a sweep (the input, not the parameters, is wrong)
with warnings.catch_warnings():  # experimental in Optuna: a warning at every start otherwise
  warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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


def sqlite_file(storage_url: str) -> str | None:
  """The database file of an SQLite storage URL (absolute), or None for another database or in memory."""
  url = sqlalchemy.engine.make_url(storage_url)
  if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
    return None
  return os.path.abspath(url.database)


def check_storage(storage_url: str) -> None:
  """Raises InputError, naming the storage and what to do, for a URL SQLAlchemy cannot parse or has no
  dialect for, and for an SQLite file that is a folder, lies in a missing folder or is not a sound
  SQLite database (read, never written: a damaged study stays as it was)."""
  where = f"storage {storage_url}"
  try:
    sqlalchemy.engine.make_url(storage_url).get_dialect()
  except (sqlalchemy.exc.ArgumentError, ValueError) as e:
    raise InputError(f"{where} is not a database URL SQLAlchemy can open ({' '.join(str(e).split())}); give "
                     "--storage=sqlite:///PATH/study.db, postgresql://USER@HOST/DB or mysql://USER@HOST/DB, or leave "
                     "it out for WORKDIR/study.db") from None
  path = sqlite_file(storage_url)
  if path is None:
    return
  folder = os.path.dirname(path)
  if not os.path.isdir(folder):
    raise InputError(f"{where}: folder {folder} does not exist; create it or give another --storage")
  if os.path.isdir(path):
    raise InputError(f"{where}: {path} is a folder, not an SQLite database file; move it away or give another "
                     "--storage (or --workdir)")
  if not os.path.exists(path):
    return
  try:
    connection = sqlite3.connect(path)
    try:
      problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    finally:
      connection.close()
  except sqlite3.Error as e:
    problems = [str(e)]
  if problems != ["ok"]:
    raise InputError(f"{where}: {path} is not a sound SQLite database ({' '.join(problems[0].split())}); it was "
                     "left as it is: restore it from a copy, or move it away to start a new study (or give "
                     "another --storage or --workdir)")


@contextlib.contextmanager
def storage_errors(storage_url: str) -> Iterator[None]:
  """Turns what the database raises (unreachable, damaged, a missing driver) into one InputError line."""
  try:
    yield
  except sqlalchemy.exc.SQLAlchemyError as e:
    detail = " ".join(str(getattr(e, "orig", None) or e).split())
    raise InputError(f"storage {storage_url} failed ({type(e).__name__}: {detail}); check the storage (the "
                     "database file, or that the server is reachable), then rerun") from None


def open_study(storage_url: str, study_name: str, seed: int, pruner: optuna.pruners.BasePruner,
               stale_seconds: int) -> optuna.Study:
  """The study `study_name` in `storage_url`, created or loaded, with a TPE sampler seeded by (`seed`, the
  number of trials it holds): a run from scratch is reproducible, and a resumed or second process does
  not draw its predecessor's first samples again (constant_liar keeps concurrent trials apart too).
  InputError, naming the storage, where it cannot serve (`check_storage`)."""
  check_storage(storage_url)
  with storage_errors(storage_url):
    try:
      storage = optuna.storages.RDBStorage(
          storage_url, heartbeat_interval=max(1, stale_seconds // 4), grace_period=stale_seconds,
          heartbeat_stale_trial_callback=RETRY)
    except ImportError as e:
      raise InputError(f"storage {storage_url}: its database driver is not installed ({e}); install it (e.g. "
                       "pip install psycopg2-binary for postgresql://) or use sqlite:///PATH/study.db") from None
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                                pruner=pruner)
    reseed(study, seed)
  return study


def reseed(study: optuna.Study, seed: int) -> None:
  """A TPE sampler seeded by (`seed`, the number of trials the study holds now)."""
  sampler_seed = int(np.random.SeedSequence([seed, len(study.get_trials(deepcopy=False))]).generate_state(1)[0])
  study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)


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


def objective(config: ml_collections.ConfigDict, space: search_space.Space, workdir: str, study: optuna.Study,
              interrupts: ctrl_c.CtrlC):
  """The function of a trial that Optuna maximises: trains, reports each validation, returns the best Dice.
  Ctrl-C stops the training at once and the writes to the study once they are done (`interrupts`)."""
  def run_trial(trial: optuna.Trial) -> float:
    folder = trial_workdir(study, trial, workdir)
    trial.set_user_attr("workdir", folder)
    pruned_at = []

    def on_eval(step: int, scores: dict[str, float]) -> bool:
      with interrupts.held():
        trial.report(scores["dice"], step)
        if trial.should_prune():
          pruned_at.append(step)
      return bool(pruned_at)

    try:
      trial_config = search_space.configure(config, search_space.suggest(trial, space))
      config_check.validate(trial_config)
      with interrupts.let_through():
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


class _NoTraceback(logging.Filter):
  """Keeps Optuna's line about a failed trial and drops its traceback: the sweep reports failures itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
  """Optuna's experimental warnings (heartbeats, retries, plots) off and its trial tracebacks out."""
  logger, no_traceback = logging.getLogger("optuna.study._optimize"), _NoTraceback()
  logger.addFilter(no_traceback)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      yield
  finally:
    logger.removeFilter(no_traceback)


def budget_lock_path(storage_url: str, workdir: str) -> str:
  """The lock file that makes counting the trials and starting one a single step: beside an SQLite
  database (shared by every folder that uses it), else in the sweep folder."""
  path = sqlite_file(storage_url)
  if path is None:
    return os.path.join(workdir, ".sweep.lock")
  return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


class _BudgetLock:
  """An exclusive flock, taken before the trials are counted and let go once a trial has started."""

  def __init__(self, path: str):
    self._handle = open(path, "a")  # pylint: disable=consider-using-with  (held across a trial's start)

  def acquire(self) -> None:
    fcntl.flock(self._handle, fcntl.LOCK_EX)

  def release(self) -> None:
    fcntl.flock(self._handle, fcntl.LOCK_UN)

  def close(self) -> None:
    self._handle.close()


def counted_trials(study: optuna.Study) -> tuple[int, int]:
  """(finished, running) trials of the study: what the budget counts."""
  trials = study.get_trials(deepcopy=False, states=COUNTED)
  finished = sum(t.state in FINISHED for t in trials)
  return finished, len(trials) - finished


def run_sweep(config: ml_collections.ConfigDict, space: search_space.Space, workdir: str, trials: int,
              storage: str = "", study_name: str = "sweep", pruner: str = "median", pruner_startup_trials: int = 3,
              pruner_warmup_steps: int = 0, stale_seconds: int = 120, enqueue_base: bool = False) -> optuna.Study:
  """Runs trials until the study holds `trials` finished ones (running ones elsewhere counted, module
  docstring); writes the table and plots to `workdir`. `enqueue_base`: a new study's first trial is the
  base config's own recipe (search_space.base_params), the incumbent every sampled trial is compared with."""
  if storage and storage != default_storage(workdir):
    check_storage(storage)  # before the sweep folder is made: a mistyped --storage leaves nothing behind
  storage = storage or default_storage(workdir)
  outputs.check_writable(workdir, "sweep folder")
  failures = []

  def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    sweep_report.write(study, workdir)
    failures[:] = failures + [trial] if trial.state == TrialState.FAIL else []

  with _quiet_optuna(), storage_errors(storage):
    check_storage(storage)  # before the lock file is made beside it
    lock = _BudgetLock(budget_lock_path(storage, workdir))
    finished, running = 0, 0  # when the budget stops this process
    try:
      lock.acquire()  # processes creating one study's tables at once collide; and enqueue the base twice
      try:
        study = open_study(storage, study_name, config.seed,
                           make_pruner(pruner, pruner_startup_trials, pruner_warmup_steps), stale_seconds)
        check_space_matches(study, space)
        if enqueue_base and not study.get_trials(deepcopy=False):
          study.enqueue_trial(search_space.base_params(config, space), user_attrs={"base": True})
      finally:
        lock.release()
      interrupts = ctrl_c.CtrlC()
      run_trial = objective(config, space, workdir, study, interrupts)

      def started(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING in the storage: another process now counts it
        return run_trial(trial)

      while len(failures) < FAILURES_IN_A_ROW:
        lock.acquire()
        try:
          optuna.storages.fail_stale_trials(study)  # a dead process's trial: FAIL, its retry queued
          finished, running = counted_trials(study)
          if finished + running >= trials:
            break
          finished, running = 0, 0
          reseed(study, config.seed)  # by the trials so far: concurrent processes draw different samples
          with interrupts.held():  # Optuna's own writes too: it marks an interrupted trial FAIL after the interrupt
            study.optimize(started, n_trials=1, catch=(InputError,), callbacks=[after_trial])
        finally:
          lock.release()
    finally:
      lock.close()
    if finished < trials and running:
      print(f"note: the study holds {finished} finished and {running} running trial(s) (in other processes, or "
            f"killed less than --stale_seconds={stale_seconds} ago); --trials={trials} counts both, so this process "
            "starts no more: rerun once they have finished or gone stale")
    sweep_report.write(study, workdir)
  if len(failures) >= FAILURES_IN_A_ROW:
    raise InputError(f"{FAILURES_IN_A_ROW} trials in a row failed, the last (trial {failures[-1].number}) with: "
                     f"{failures[-1].user_attrs.get('error', 'see the log above')}")
  return study
