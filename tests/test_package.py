"""The installable package: the `unet-jax` command (unet_jax/cli/main.py) and its entry point in pyproject.toml.

The slow tests run `python -m unet_jax.cli.main`, which is what the installed `unet-jax` script calls,
from a folder other than the repository, as an installed user would; `pip install` itself is too slow
for the tests (.ci/run installs the package with `pip install -e .` before running them).
"""

import json
import os
import subprocess
import sys
import tomllib

import pytest

from unet_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "unet2d.py") + ":tiny"


def unet_jax(*args: str, cwd: str) -> subprocess.CompletedProcess:
  """`unet-jax ARGS` run in `cwd`, with the repository's unet_jax importable whether or not it is installed."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
  return subprocess.run([sys.executable, "-m", "unet_jax.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, check=False, timeout=900)


def test_pyproject_installs_the_command_and_every_subpackage():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  assert project["project"]["scripts"] == {"unet-jax": "unet_jax.cli.main:main"}
  assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["unet_jax", "unet_jax.*"]
  assert set(project["project"]["optional-dependencies"]) == {"cuda", "torch-peer", "docs", "test", "napari"}
  for name in sorted(os.listdir(os.path.join(ROOT, "unet_jax"))):  # a subpackage without __init__.py is not found
    if os.path.isdir(os.path.join(ROOT, "unet_jax", name)) and name != "__pycache__":
      assert os.path.isfile(os.path.join(ROOT, "unet_jax", name, "__init__.py")), name
  for command in main.COMMANDS:  # each top-level script is the command of the same name
    assert f'main.run_command("{command}")' in open(os.path.join(ROOT, f"{command}.py")).read()


def test_help_lists_the_five_commands(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["unet-jax", "--help"])
  main.main()
  out = capsys.readouterr().out
  assert out.startswith("usage: unet-jax COMMAND")
  for command in ("train", "evaluate", "explain", "export", "sweep"):
    assert f"\n  {command} " in out
  monkeypatch.setattr(sys, "argv", ["unet-jax", "trian"])
  with pytest.raises(SystemExit, match="unknown command 'trian'; choose one of train, evaluate"):
    main.main()


@pytest.mark.slow
def test_train_and_evaluate_from_another_folder(tmp_path):
  workdir = tmp_path / "run"
  done = unet_jax("train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.steps=2", cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-2000:]
  assert "'step': 2" in done.stdout
  done = unet_jax("evaluate", f"--config={TINY}", f"--workdir={workdir}", cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads((workdir / "report" / "report.json").read_text())
  assert report["command"].startswith("unet-jax evaluate --config=") and report["runs"][0]["step"] == 2


@pytest.mark.slow
def test_command_help_and_a_missing_config(tmp_path):
  done = unet_jax("train", "--help", cwd=str(tmp_path))
  assert "Trains a U-Net: unet-jax train --config=" in done.stdout  # the usage text, as this command
  assert "--workdir: Directory for checkpoints" in done.stdout and "--config: Config file" in done.stdout
  done = unet_jax("train", f"--workdir={tmp_path / 'w'}", cwd=str(tmp_path))  # the default configs/unet2d.py
  assert done.returncode != 0
  assert done.stderr.strip().splitlines() == [
      f"error: config file configs/unet2d.py not found (relative to the current folder {tmp_path}); "
      "pass --config=path/to/config.py[:variant]"]
  assert not (tmp_path / "w").exists()
