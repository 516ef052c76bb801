"""sweep.py on the tiny config: trials, results and plots, resume after a crash, pruning, a shared
storage, the test split never seen, and one-line errors for bad search-space files."""

import csv
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, runlog
from unet_jax.tuning import search_space, sweep_report, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPACE = os.path.join(ROOT, "configs", "sweeps", "tiny.py")
STEADY = {"optim.learning_rate": 1e-5, "model.base_features": 8, "augment.preset": "none"}  # val Dice 0.60 at step 10


def _config(steps=10):
  config = unet2d.get_config("tiny")
  config.train.steps = steps
  config.train.tensorboard = False
  return config


def _starts(trial_dir):
  return [r["step"] for r in runlog.records(runlog.log_path(trial_dir)) if r.get("event") == "start"]


def _states(study):
  return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_two_trials_write_the_table_and_plots_from_validation_only(tmp_path, monkeypatch):
  config, workdir = _config(), str(tmp_path / "sweep")
  test_image = data.load_splits(config.data)["test"].image
  predicted = []
  predict = Predictor.raw_probabilities
  monkeypatch.setattr(Predictor, "raw_probabilities", lambda self, image: predicted.append(image) or predict(self, image))
  study = sweeps.run_sweep(config, search_space.load(TINY_SPACE, config), workdir, trials=2)
  assert _states(study) == ["COMPLETE", "COMPLETE"] and predicted
  assert not any(image.shape == test_image.shape and np.array_equal(image, test_image) for image in predicted)
  for t in study.trials:
    assert t.user_attrs["workdir"] == os.path.join(workdir, f"trial_{t.number}")
    _, validations = runlog.read(runlog.log_path(t.user_attrs["workdir"]))
    assert t.value == max(r["val_dice"] for r in validations) and t.user_attrs["steps"] == 10
  assert study.trials[0].params != study.trials[1].params  # TPE's seeded start samples
  with open(os.path.join(workdir, sweep_report.TABLE_CSV)) as f:
    rows = list(csv.DictReader(f))
  assert [(r["trial"], r["state"], r["steps"]) for r in rows] == [("0", "COMPLETE", "10"), ("1", "COMPLETE", "10")]
  assert set(search_space.load(TINY_SPACE, config)) <= set(rows[0])
  assert float(rows[1]["val_dice"]) == pytest.approx(study.trials[1].value)
  best = study.best_trial
  assert open(os.path.join(workdir, sweep_report.TABLE_MD)).readline().startswith(
      f"Best by validation Dice: trial {best.number} ({best.value:.4f})")
  for png in (sweep_report.HISTORY_PNG, sweep_report.IMPORTANCE_PNG):
    assert open(os.path.join(workdir, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.isfile(os.path.join(workdir, "study.db"))


STOPPED_STEPS = 40  # the sweep is frozen (SIGSTOP) at step 10's checkpoint, so the signal lands mid-trial on any machine


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])  # a crash (heartbeat goes stale), Ctrl-C
@pytest.mark.usefixtures("terminal_ctrl_c")
def test_a_stopped_sweep_resumes_its_trial_from_the_checkpoint(tmp_path, stop):
  workdir = str(tmp_path / "sweep")
  command = [sys.executable, "sweep.py", "--config=configs/unet2d.py:tiny", f"--space={TINY_SPACE}",
             f"--workdir={workdir}", "--trials=2", "--stale_seconds=2", "--study_name=sweep",
             f"--config.train.steps={STOPPED_STEPS}", "--config.train.tensorboard=False",
             "--config.train.keep_checkpoints=100"]  # step 10's checkpoint is never rotated away while we look
  stderr_path = str(tmp_path / "stderr.txt")
  with open(stderr_path, "w") as stderr:  # a file, not a pipe: progress bars could fill a pipe and block
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
  checkpoint = os.path.join(workdir, "trial_1", "checkpoints", "10")
  deadline = time.time() + 900
  while not os.path.isdir(checkpoint) and process.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  running = process.poll() is None
  process.send_signal(signal.SIGSTOP)  # frozen mid-trial 1, however fast the machine
  process.send_signal(stop)
  process.send_signal(signal.SIGCONT)  # SIGINT is handled once it runs again
  process.wait()
  stderr_lines = open(stderr_path).read().strip().splitlines()
  assert running and os.path.isdir(checkpoint), f"no signal mid-trial 1; stderr ends: {stderr_lines[-5:]}"
  if stop == signal.SIGINT:
    assert stderr_lines[-1] == "error: interrupted; rerun the same command to continue the sweep", stderr_lines[-5:]
  else:
    time.sleep(3)  # > stale_seconds: trial 1's heartbeat is stale
  study = sweeps.run_sweep(_config(steps=STOPPED_STEPS), search_space.load(TINY_SPACE, _config()), workdir,
                           trials=2, stale_seconds=2)
  assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
  crashed, retry = study.trials[1], study.trials[2]
  assert retry.params == crashed.params and retry.user_attrs["workdir"] == os.path.join(workdir, "trial_1")
  assert _starts(os.path.join(workdir, "trial_0")) == [0]  # the finished trial is not redone
  starts = _starts(os.path.join(workdir, "trial_1"))
  assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 10  # resumed from its checkpoint
  assert retry.user_attrs["steps"] == STOPPED_STEPS and not os.path.exists(os.path.join(workdir, "trial_2"))


@pytest.mark.slow
@pytest.mark.usefixtures("terminal_ctrl_c")
def test_ctrl_c_during_a_validation_report_lets_the_report_finish_then_stops_a_resumable_trial(tmp_path, monkeypatch):
  config, workdir = _config(), str(tmp_path / "sweep")
  space = search_space.load(TINY_SPACE, config)
  report = optuna.trial.Trial.report

  def report_under_ctrl_c(trial, value, step):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the database write starts (it would land inside it)
    report(trial, value, step)
  with monkeypatch.context() as patch:
    patch.setattr(optuna.trial.Trial, "report", report_under_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
      sweeps.run_sweep(config, space, workdir, trials=1)
  study = sweeps.run_sweep(config, space, workdir, trials=1)
  assert _states(study) == ["FAIL", "COMPLETE"]
  stopped, retry = study.trials
  assert list(stopped.intermediate_values) == [10]  # the report was written, then the trial stopped
  assert retry.params == stopped.params and retry.user_attrs["workdir"] == os.path.join(workdir, "trial_0")
  assert _starts(os.path.join(workdir, "trial_0")) == [0, 10]  # the retry resumed from step 10's checkpoint


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_below_the_median_at_its_first_validation(tmp_path):
  config, workdir = _config(steps=20), str(tmp_path / "sweep")
  space = search_space.load(TINY_SPACE, config)
  os.makedirs(workdir)
  study = sweeps.open_study(sweeps.default_storage(workdir), "sweep", 0, optuna.pruners.NopPruner(), 2)
  study.enqueue_trial(STEADY)
  study.enqueue_trial({**STEADY, "optim.learning_rate": 1e-2})  # overshoots first: val Dice 0 at step 10
  study = sweeps.run_sweep(config, space, workdir, trials=2, pruner_startup_trials=1)
  assert _states(study) == ["COMPLETE", "PRUNED"]
  good, bad = study.trials
  assert bad.intermediate_values[10] < good.intermediate_values[10] and 20 in good.intermediate_values
  assert bad.user_attrs["steps"] == 10 and runlog.read(runlog.log_path(bad.user_attrs["workdir"]))[1][-1]["step"] == 10
  assert "PRUNED" in open(os.path.join(workdir, sweep_report.TABLE_MD)).read()


@pytest.mark.slow
def test_two_invocations_share_one_storage(tmp_path):
  config, url = _config(), f"sqlite:///{tmp_path / 'shared.db'}"
  space = search_space.load(TINY_SPACE, config)
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  sweeps.run_sweep(config, space, first, trials=1, storage=url)
  study = sweeps.run_sweep(config, space, second, trials=2, storage=url)
  assert _states(study) == ["COMPLETE", "COMPLETE"]
  assert study.trials[0].params != study.trials[1].params  # the second process draws new samples
  assert [d for d in os.listdir(first) if d.startswith("trial_")] == ["trial_0"]
  assert [d for d in os.listdir(second) if d.startswith("trial_")] == ["trial_1"]
  with open(os.path.join(second, sweep_report.TABLE_CSV)) as f:
    assert [r["trial"] for r in csv.DictReader(f)] == ["0", "1"]
  assert len(sweeps.run_sweep(config, space, second, trials=2, storage=url).trials) == 2  # nothing left to run
  with pytest.raises(InputError, match="keep the space or give another --study_name"):
    sweeps.run_sweep(config, {**space, "optim.learning_rate": optuna.distributions.FloatDistribution(0.1, 0.2)},
                     second, trials=3, storage=url)


@pytest.mark.slow
def test_trials_failing_on_their_input_are_recorded_and_three_in_a_row_stop(tmp_path):
  space = {"train.batch_size": optuna.distributions.CategoricalDistribution((3,))}  # not a multiple of 2 devices
  workdir = str(tmp_path / "sweep")
  records, handler = [], logging.Handler()
  handler.emit = records.append  # what Optuna's own stderr handler is given
  logging.getLogger("optuna").addHandler(handler)
  try:
    with pytest.raises(InputError, match=r"3 trials in a row failed, the last \(trial 2\) with: .*multiple of the 2"):
      sweeps.run_sweep(_config(), space, workdir, trials=5)
  finally:
    logging.getLogger("optuna").removeHandler(handler)
  with open(os.path.join(workdir, sweep_report.TABLE_CSV)) as f:
    assert [r["state"] for r in csv.DictReader(f)] == ["FAIL"] * 3
  failed = [r for r in records if "failed with parameters" in r.getMessage()]
  assert len(failed) == 3 and not any(r.exc_info or r.exc_text for r in records)  # one line each, no traceback


BAD_SPACES = {
    "missing.py": (None, "not found"),
    "syntax.py": ("def get_config(:\n", r"could not be read \(line 1\): SyntaxError"),
    "raises.py": ("def get_config():\n  return 1 / 0\n", "ZeroDivisionError: division by zero"),
    "plain_dict.py": ("def get_config():\n  return {'optim': {}}\n", "must return an ml_collections.ConfigDict"),
    "empty.py": ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict()\n", "names no field"),
    "unknown.py": ("{'optim': {'learning_rat': ('log_float', 1e-4, 1e-2)}}", "optim.learning_rat is not a field"),
    "section.py": ("{'optim': ('log_float', 1e-4, 1e-2)}", "optim is not a field"),
    "kind.py": ("{'optim': {'learning_rate': ('uniform', 1e-4, 1e-2)}}", "is not a distribution: it must be a tuple"),
    "log_zero.py": ("{'optim': {'learning_rate': ('log_float', 0.0, 1e-2)}}", "is not a distribution: .*low"),
    "int_floats.py": ("{'train': {'steps': ('int', 1.5, 10)}}", "bounds and step must be integers"),
    "no_choices.py": ("{'model': {'norm': ('categorical', ())}}", "at least one choice"),
    "bad_choice.py": ("{'train': {'loss': ('categorical', ('bce', 'focal'))}}", "train.loss value 'focal' is not allowed"),
    "bad_bound.py": ("{'train': {'fg_fraction': ('float', 0.5, 1.5)}}", "fg_fraction value 1.5 is not allowed"),
    "bad_type.py": ("{'train': {'steps': ('categorical', (10, 'ten'))}}", "train.steps value 'ten' is not allowed"),
    "bad_preset.py": ("{'augment': {'preset': ('categorical', ('flips', 'strong'))}}", "unknown augmentation preset"),
}


def _write_space(tmp_path, name, body):
  path = str(tmp_path / name)
  if body is not None:
    if body.startswith("{"):
      body = f"import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({body})\n"
    with open(path, "w") as f:
      f.write(body)
  return path


@pytest.mark.parametrize("name", sorted(BAD_SPACES))
def test_a_bad_space_file_is_refused_naming_the_problem(tmp_path, name):
  body, message = BAD_SPACES[name]
  with pytest.raises(InputError, match=message):
    search_space.load(_write_space(tmp_path, name, body), _config())


def test_the_shipped_spaces_load():
  for name, variant in (("tiny", "tiny"), ("recipe", "vnc"), ("recipe_local", "vnc")):
    config = unet2d.get_config(variant)
    config.eval.engine = "xla"  # as their commands set it: GroupNorm trials have no ONNX export
    assert search_space.load(os.path.join(ROOT, "configs", "sweeps", f"{name}.py"), config)
  with pytest.raises(InputError, match="model.norm value 'group' is not allowed: eval.engine='onnx'"):
    search_space.load(os.path.join(ROOT, "configs", "sweeps", "recipe.py"), unet2d.get_config("vnc"))


@pytest.mark.slow
def test_enqueue_base_runs_the_incumbent_recipe_first(tmp_path):
  config = _config()
  space = search_space.load(TINY_SPACE, config)
  base = search_space.base_params(config, space)
  assert base == {"optim.learning_rate": config.optim.learning_rate, "model.base_features": 4,
                  "augment.preset": "flips"}  # tiny's preset: its augment fields match 'flips', not 'none'
  study = sweeps.run_sweep(config, space, str(tmp_path / "sweep"), trials=1, enqueue_base=True)
  assert study.trials[0].params == base and study.trials[0].user_attrs["base"]
  config.model.base_features = 16
  with pytest.raises(InputError, match="base config's model.base_features=16 is outside the search space"):
    search_space.base_params(config, space)


# Nothing silent, nothing lost: storage, the space's whole support, tuple choices, the budget across processes.

def _quick_objective(config, space, workdir, study, interrupts):
  """A trial without training: the sampled config checked, a value from the parameters."""
  del workdir, study, interrupts

  def run_trial(trial):
    params = search_space.suggest(trial, space)
    search_space.configure(config, params).lock()
    return float(len(repr(sorted(params.items()))) % 7) / 7
  return run_trial


def _digest(folder):
  digests = {}
  for base, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(base, name)
      digests[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return digests


@pytest.fixture(scope="module")
def _finished_sweep_template(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished") / "sweep")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sweeps, "objective", _quick_objective)
    config = _config()
    sweeps.run_sweep(config, search_space.load(TINY_SPACE, config), workdir, trials=2)
  return workdir


@pytest.fixture
def finished_sweep(_finished_sweep_template, tmp_path):
  """A sweep folder holding a study of two finished (quick) trials, its table, plots and database."""
  return shutil.copytree(_finished_sweep_template, str(tmp_path / "sweep"))


def _spoil_storage(workdir, kind):
  """The sweep's study.db spoiled as `kind`, or the --storage URL that names the problem."""
  db = os.path.join(workdir, "study.db")
  data_ = open(db, "rb").read()
  if kind == "garbage_header":
    open(db, "wb").write(b"not an SQLite file at all" + data_[25:])
  elif kind == "truncated":
    open(db, "wb").write(data_[:int(0.6 * len(data_))])
  elif kind == "folder":
    os.remove(db)
    os.makedirs(os.path.join(db, "inside"))
  elif kind == "unknown_scheme":
    return "memcache://localhost/study"
  elif kind == "missing_folder":
    return f"sqlite:///{os.path.join(workdir, 'no_such_folder', 'study.db')}"
  return ""


STORAGE_MESSAGES = {
    "garbage_header": r"study\.db is not a sound SQLite database \(file is not a database\); it was left as it is",
    "truncated": r"study\.db is not a sound SQLite database \(.*malformed.*\); it was left as it is",
    "folder": r"study\.db is a folder, not an SQLite database file; move it away",
    "unknown_scheme": r"storage memcache://localhost/study is not a database URL SQLAlchemy can open \(.*memcache",
    "missing_folder": r"folder .*no_such_folder does not exist; create it or give another --storage",
}


@pytest.mark.parametrize("kind", sorted(STORAGE_MESSAGES))
def test_a_storage_that_cannot_serve_is_refused_and_nothing_is_touched(finished_sweep, kind):
  storage = _spoil_storage(finished_sweep, kind)
  before = _digest(finished_sweep)
  config = _config()
  with pytest.raises(InputError, match=STORAGE_MESSAGES[kind]):
    sweeps.run_sweep(config, search_space.load(TINY_SPACE, config), finished_sweep, trials=3, storage=storage)
  assert _digest(finished_sweep) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(STORAGE_MESSAGES))
def test_sweep_py_on_a_storage_that_cannot_serve_says_one_line(finished_sweep, kind):
  storage = _spoil_storage(finished_sweep, kind)
  before = _digest(finished_sweep)
  result = subprocess.run([sys.executable, "sweep.py", "--config=configs/unet2d.py:tiny", f"--space={TINY_SPACE}",
                           f"--workdir={finished_sweep}", "--trials=3", "--study_name=sweep",
                           *([f"--storage={storage}"] if storage else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr[-2000:]
  assert result.stderr.startswith("error: storage ") and re.search(STORAGE_MESSAGES[kind], result.stderr), result.stderr
  assert _digest(finished_sweep) == before


INSIDE_SPACES = {  # bounds (or each value alone) allowed, values inside not
    "inside.py": ("{'train': {'patch_size': ('int', 32, 40)}}",
                  r"train.patch_size value 33 is not allowed: .*divisible by 2\*\*model.depth=4.* \(refused: 33-35, "
                  r"37-39 of the values it can draw; narrow the space or give the range a step"),
    "inside_log.py": ("{'train': {'patch_size': ('log_int', 16, 24)}}", r"patch_size value 17 is not allowed.*"
                      r"refused: 17-19, 21-23"),
    "together.py": ("{'train': {'patch_size': ('categorical', (32, 36))}, 'model': {'depth': ('categorical', (2, 3))}}",
                    r"the combination (train.patch_size=36, model.depth=3|model.depth=3, train.patch_size=36) is not "
                    r"allowed: .*\(each value alone is\)"),
}


@pytest.mark.parametrize("name", sorted(INSIDE_SPACES))
def test_a_space_whose_inside_is_invalid_is_refused_naming_the_values(tmp_path, name):
  body, message = INSIDE_SPACES[name]
  with pytest.raises(InputError, match=message):
    search_space.load(_write_space(tmp_path, name, body), _config())
  stepped = _write_space(tmp_path, "stepped.py", "{'train': {'patch_size': ('int', 32, 40, 4)}}")
  assert search_space.support(search_space.load(stepped, _config())["train.patch_size"]) == (32, 36, 40)


@pytest.mark.slow
@pytest.mark.parametrize("name, body, trials, message", [
    ("unknown.py", BAD_SPACES["unknown.py"][0], 1, "optim.learning_rat is not a field"),
    ("inside.py", INSIDE_SPACES["inside.py"][0], 3, "train.patch_size value 33 is not allowed")])
def test_sweep_py_refuses_a_bad_space_file_in_one_line_before_any_trial(tmp_path, name, body, trials, message):
  path = _write_space(tmp_path, name, body)
  result = subprocess.run([sys.executable, "sweep.py", "--config=configs/unet2d.py:tiny", f"--space={path}",
                           f"--workdir={tmp_path / 'sweep'}", f"--trials={trials}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr[-2000:]
  assert re.match(rf"error: search space file .*{re.escape(message)}", result.stderr)
  assert "Traceback" not in result.stdout + result.stderr and not os.path.exists(tmp_path / "sweep")


@pytest.mark.slow
def test_tuple_choices_resume_with_more_trials(tmp_path, monkeypatch):
  monkeypatch.setattr(sweeps, "objective", _quick_objective)
  monkeypatch.setattr(sweep_report, "write", lambda study, folder: [])  # 12 trials' plots: not what is tested
  config, workdir = _config(), str(tmp_path / "sweep")
  path = _write_space(tmp_path, "scale.py", "{'augment': {'scale_range': ('categorical', ((0.8, 1.2), (0.9, 1.1)))}, "
                      "'model': {'base_features': ('categorical', (4, 8))}}")
  assert search_space.load(path, config)["augment.scale_range"].choices == ("(0.8, 1.2)", "(0.9, 1.1)")
  sweeps.run_sweep(config, search_space.load(path, config), workdir, trials=3)
  study = sweeps.run_sweep(config, search_space.load(path, config), workdir, trials=12)  # TPE past its 10 starts
  assert _states(study) == ["COMPLETE"] * 12
  assert {t.params["augment.scale_range"] for t in study.trials} == {"(0.8, 1.2)", "(0.9, 1.1)"}
  configured = search_space.configure(config, study.trials[-1].params).augment.scale_range
  assert configured in ((0.8, 1.2), (0.9, 1.1)) and isinstance(configured, tuple)
  config.augment.scale_range = (0.9, 1.1)
  assert search_space.base_params(config, search_space.load(path, config))["augment.scale_range"] == "(0.9, 1.1)"


def test_running_trials_elsewhere_count_against_the_budget(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sweeps, "objective", _quick_objective)
  config, workdir = _config(), str(tmp_path / "sweep")
  space = search_space.load(TINY_SPACE, config)
  os.makedirs(workdir)
  elsewhere = sweeps.open_study(sweeps.default_storage(workdir), "sweep", 0, optuna.pruners.NopPruner(), 120)
  elsewhere.ask()  # another process's trial, running (its heartbeat never goes stale here)
  study = sweeps.run_sweep(config, space, workdir, trials=2)
  assert _states(study) == ["RUNNING", "COMPLETE"]
  capsys.readouterr()
  study = sweeps.run_sweep(config, space, workdir, trials=2)
  assert _states(study) == ["RUNNING", "COMPLETE"]
  assert "note: the study holds 1 finished and 1 running trial(s)" in capsys.readouterr().out
  assert os.path.isfile(os.path.join(workdir, ".study.db.lock"))


CONCURRENT = """
import sys, time
from configs import unet2d
from unet_jax.tuning import search_space, sweeps
def slow_objective(config, space, workdir, study, interrupts):
  def run_trial(trial):
    search_space.suggest(trial, space)
    time.sleep(1.5)
    return 0.5
  return run_trial
sweeps.objective = slow_objective
config = unet2d.get_config("tiny")
sweeps.run_sweep(config, search_space.load(sys.argv[2], config), sys.argv[1], trials=3)
"""


@pytest.mark.slow
def test_two_processes_on_one_folder_hold_the_trial_budget(tmp_path):
  workdir = str(tmp_path / "sweep")
  processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT, workdir, TINY_SPACE], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [p.communicate(timeout=300) for p in processes]
  assert all(p.returncode == 0 for p in processes), results
  study = optuna.load_study(study_name="sweep", storage=sweeps.default_storage(workdir))
  assert _states(study) == ["COMPLETE"] * 3
  params = [t.params for t in study.trials]
  assert all(params.count(p) == 1 for p in params)  # the two processes draw different samples
