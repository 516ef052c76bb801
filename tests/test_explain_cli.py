"""explain.py end to end on a tiny untrained checkpoint: the report's files, --input, one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile

from configs import unet2d
from unet_jax.io import checkpoint
from unet_jax.network.model import build_model, init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEAP = ["--config.explain.ig_steps=8", "--config.explain.sanity_steps=2", "--config.explain.actmax_steps=2",
         "--config.explain.dice_tiles=2", "--config.explain.gallery_layers=bottleneck",
         "--config.explain.gallery_filters=2", "--config.explain.actmax_px=16"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir whose best checkpoint holds a fresh tiny U-Net (the CLI needs no training to be tested)."""
  path = str(tmp_path_factory.mktemp("explain") / "w")
  variables = init_variables(build_model(unet2d.get_config("tiny").model), jax.random.PRNGKey(0))
  manager = checkpoint.Checkpoints(path)
  manager.save(1, {"params": variables["params"], "batch_stats": variables["batch_stats"], "step": 1}, val_dice=0.5)
  manager.close()
  return path


def _explain(workdir, *args):
  return subprocess.run([sys.executable, "explain.py", "--config=configs/unet2d.py:tiny", f"--workdir={workdir}",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_box_on_a_split_writes_panels_rankings_json_and_markdown(workdir, tmp_path):
  out = tmp_path / "out"
  result = _explain(workdir, "--split=test", "--slice=1", "--object=8,8,24,30", f"--output_dir={out}", *CHEAP)
  assert result.returncode == 0, result.stderr[-3000:]
  doc = json.loads((out / "explain.json").read_text())
  [obj] = doc["objects"]
  assert obj["name"] == "box_8_8_24_30" and obj["pixels"] == 16 * 22 and (out / obj["panel"]).is_file()
  assert len(obj["randomisation"]) == 6 and {"attribution", "random"} == set(obj["deletion"]["auc"])
  assert set(obj["filter_spearman"]) == {"enc0", "enc1", "bottleneck", "dec1", "dec0"}
  assert doc["dataset"]["dice"]["tiles"] == 2 and len(doc["dataset"]["dice"]["top"]["dec0"]) == 4
  assert (out / "kernels.png").is_file() and (out / "gallery.png").is_file()
  header = (out / "filters_bottleneck.csv").read_text().splitlines()[0]
  assert header == "channel,val_dice_drop,box_8_8_24_30_score_drop,box_8_8_24_30_estimate"
  markdown = (out / "explain.md").read_text()
  assert "IG completeness error" in markdown and "cascading randomisation" in markdown and "seconds per object" in markdown


@pytest.mark.slow
def test_any_tiff_with_input(workdir, tmp_path):
  stack = (np.random.default_rng(0).random((2, 40, 44)) * 255).astype(np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", stack)
  out = tmp_path / "out"
  result = _explain(workdir, f"--input={tmp_path / 'stack.tif'}", "--slice=1", "--object=0,0,40,44",
                    f"--output_dir={out}", "--filters=False", "--sanity=False", *CHEAP)
  assert result.returncode == 0, result.stderr[-3000:]
  doc = json.loads((out / "explain.json").read_text())
  assert doc["source"].endswith("stack.tif slice 1") and doc["objects"][0]["crop"] == [0, 0, 40, 44]


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--object=70,3"], "error: pixel (70, 3) is outside the slice; valid y in 0..63, x in 0..63"),
    (["--object=1,1", "--config.explain.cam_layers=enc9"], "error: unknown layer 'enc9'; valid layers of this "
     "depth-2 U-Net: enc0, enc1, bottleneck, dec1, dec0"),
    (["--object=1,1", "--slice=9"], "error: --slice=9 is outside the test split; valid slices 0..1"),
])
def test_errors_are_one_line(workdir, args, expected):
  result = _explain(workdir, *args)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(expected)


def test_an_output_dir_that_is_a_file_fails_before_any_work(tmp_path, monkeypatch):
  from unet_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from unet_jax.explain import explanation  # pylint: disable=g-import-not-at-top
  from unet_jax.io import data  # pylint: disable=g-import-not-at-top
  (tmp_path / "taken").write_text("an earlier result")
  monkeypatch.setattr(data, "load_splits", lambda *a, **k: pytest.fail("data loaded before the outputs were checked"))
  with pytest.raises(InputError, match="output folder .*taken' is a file, not a folder; choose another path"):
    explanation.explain(unet2d.get_config("tiny"), str(tmp_path / "no_run"), str(tmp_path / "taken"), "all")
  with pytest.raises(InputError, match="cannot be made: .*taken' is a file"):
    explanation.explain(unet2d.get_config("tiny"), str(tmp_path / "no_run"), str(tmp_path / "taken" / "below"), "all")
  assert (tmp_path / "taken").read_text() == "an earlier result"


def test_an_empty_prediction_has_nothing_to_explain():
  from unet_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from unet_jax.explain import explanation  # pylint: disable=g-import-not-at-top
  objects = explanation.slice_objects(np.zeros((16, 16), bool), None, 0, 0.5)
  for spec in ("all", "every"):
    with pytest.raises(InputError, match=f"^--object={spec}: nothing to explain: the prediction of this slice is empty"):
      explanation.parse_objects(spec, objects, 8)


@pytest.mark.slow
def test_explain_py_says_so_when_there_is_nothing_to_explain_or_the_output_is_a_file(workdir, tmp_path):
  (tmp_path / "taken").write_text("an earlier result")
  for args, expected in (
      ([f"--output_dir={tmp_path / 'taken'}", "--object=all"], "error: output folder "),
      ([f"--output_dir={tmp_path / 'out'}", "--object=all", "--config.eval.threshold=0.999"],
       "error: --object=all: nothing to explain: the prediction of this slice is empty")):
    result = _explain(workdir, *args)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith(expected), result.stderr
  assert (tmp_path / "taken").read_text() == "an earlier result" and not (tmp_path / "out").exists()
