"""The train.py / evaluate.py entry points: one-line errors, kill -9 and resume, evaluation files."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _error_line(result):
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ""


@pytest.mark.slow
def test_lucchi_offline_fails_fast_with_one_line(tmp_path):
  # An unreachable (closed loopback) URL stands in for the offline machine.
  result = _run("train.py", "--config=configs/unet2d.py", f"--workdir={tmp_path}/w",
                f"--config.data.root={tmp_path}/lucchi", "--config.data.url=http://127.0.0.1:9/")
  assert result.returncode != 0
  line = _error_line(result)
  assert line.startswith("error: Lucchi file training.tif is not in") and ":synthetic" in line


@pytest.mark.slow
def test_bad_config_value_is_one_line(tmp_path):
  result = _run("train.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}/w", "--config.train.loss=focal")
  assert result.returncode != 0 and _error_line(result).startswith("error: config field train.loss='focal' is invalid")


@pytest.mark.slow
def test_missing_data_folder_is_one_line(tmp_path):
  result = _run("train.py", "--config=configs/unet2d.py:vnc", f"--workdir={tmp_path}/w",
                f"--config.data.root={tmp_path}/nothing")
  assert result.returncode != 0 and "lacks training.tif" in _error_line(result)


@pytest.mark.slow
def test_evaluate_without_checkpoint_keeps_workdir(tmp_path):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "keep.txt").write_text("results")
  result = _run("evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path}/w")
  assert result.returncode != 0 and "no best checkpoint" in _error_line(result)
  assert (tmp_path / "w" / "keep.txt").read_text() == "results"


@pytest.mark.slow
def test_kill_9_then_resume_and_evaluate(tmp_path):
  workdir = tmp_path / "w"
  args = ["train.py", "--config=configs/unet2d.py:tiny", f"--workdir={workdir}", "--config.train.steps=400",
          "--config.train.checkpoint_every=5", "--config.train.eval_every=1000"]
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  checkpoints = workdir / "checkpoints"
  while time.time() < deadline and not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    time.sleep(0.5)
  time.sleep(1.0)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert 0 < saved < 400
  result = _run(*args[:-3], "--config.train.steps=" + str(saved + 5), "--config.train.eval_every=5")
  assert result.returncode == 0, result.stderr[-2000:]
  starts = [json.loads(l)["step"] for l in open(workdir / "log.jsonl") if '"start"' in l]
  assert starts == [0, saved]
  result = _run("evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((workdir / "report" / "report.json").read_text())
  assert {"dice", "iou", "precision", "recall"} <= set(report["runs"][0]["pixel"])
  assert report["runs"][0]["step"] == saved + 5
  assert list((workdir / "report").glob("*/test/prediction.tif"))
