"""export.py and explain.py on outputs in the way: one line that says what is wrong, earlier files kept."""

import os
import subprocess
import sys
import zipfile

import jax
import pytest

from configs import unet2d
from unet_jax.io import checkpoint
from unet_jax.network.model import build_model, init_variables

from test_export import make_workdir  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNWRITABLE = "/sys"  # sysfs: no process may create files there, root included


def _run(script, *args):
  return subprocess.run([sys.executable, script, "--config=configs/unet2d.py:tiny", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _error_line(result) -> str:
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_export_refuses_outputs_in_the_way_and_replaces_only_when_asked(tmp_path):
  workdir = str(tmp_path / "run")
  make_workdir(workdir)
  export = lambda output, *more: _run("export.py", f"--workdir={workdir}", f"--output={output}",
                                      f"--input={os.path.join(workdir, 'slice.tif')}", *more)
  important = tmp_path / "important.zip"
  important.write_bytes(b"an unrelated archive")
  (tmp_path / "model.zip").mkdir()
  cases = [
      (important, "already exists; pass --overwrite to replace it, or choose another name"),
      (tmp_path / "model.zip", "is a folder, not a file; give the package's file name, e.g. "),
      (important / "model.zip", f"cannot be made: {str(important)!r} is a file, not a folder; choose another path"),
  ]
  if not os.access(UNWRITABLE, os.W_OK) or os.geteuid() == 0:  # root passes os.access but not sysfs itself
    cases.append((f"{UNWRITABLE}/model.zip", f"error: permission denied for '{UNWRITABLE}"))
  for output, expected in cases:
    line = _error_line(export(output))
    assert line.startswith("error: ") and expected in line and "free disk space" not in line, line
  assert important.read_bytes() == b"an unrelated archive" and not os.listdir(tmp_path / "model.zip")
  result = export(important, "--overwrite", "--validate=False")
  assert result.returncode == 0, result.stderr[-3000:]
  with zipfile.ZipFile(important) as package:
    assert {"rdf.yaml", "weights.onnx", "README.md"} <= set(package.namelist())
  assert sorted(os.listdir(tmp_path)) == ["important.zip", "model.zip", "run"]  # no temporary left beside it


@pytest.mark.slow
def test_explain_into_a_folder_it_may_not_write_says_so(tmp_path):
  workdir = str(tmp_path / "run")
  variables = init_variables(build_model(unet2d.get_config("tiny").model), jax.random.PRNGKey(0))
  saver = checkpoint.Checkpoints(workdir)
  saver.save(1, {**variables, "step": 1}, val_dice=0.5)
  saver.close()
  output = f"{UNWRITABLE}/unet_jax_explain"
  result = _run("explain.py", f"--workdir={workdir}", "--object=8,8,24,30", f"--output_dir={output}",
                "--filters=False", "--sanity=False", "--config.explain.ig_steps=8", "--config.explain.actmax_steps=2")
  line = _error_line(result)
  # as root the folder passes the up-front check (os.access) and the write is refused; others stop up front
  assert line.startswith("error: ") and UNWRITABLE in line and "free disk space" not in line, line
  assert "permission denied" in line or "cannot be written" in line, line
  assert not os.path.exists(output)
