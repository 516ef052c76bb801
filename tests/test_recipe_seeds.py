"""benchmarks/recipe_seeds.py on the tiny config: every arm-seed chain runs, its final fit is scored at the
threshold and minimum object size its 8-slice twin chose on val, a rerun resumes from the reports, and a bad arm
is refused. And `report.load`, which reads the scores back, in one line when the report is missing or unreadable."""

import functools
import json
import os

import pytest

from script_runs import run_script
from unet_jax.errors import InputError
from unet_jax.reports import report

recipe_seeds = functools.partial(run_script, "benchmarks/recipe_seeds.py")


@pytest.mark.slow
def test_seeds_and_final_fits_are_scored_and_resumed(tmp_path):
  args = ["--config=configs/unet2d.py:tiny", "--arms=default", "--seeds=3", "--steps=10", "--final_fit",
          "--jobs=2", f"--out={tmp_path}", "--config.eval.select_threshold=True",
          "--config.eval.select_min_size=True"]
  done = recipe_seeds(*args)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
  tuned, fitted = sorted(rows, key=lambda r: r["final_fit"])
  assert (tuned["seed"], tuned["final_fit"], fitted["seed"], fitted["final_fit"]) == (3, False, 3, True)
  assert tuned["step"] == fitted["step"] == 10 and fitted["val_dice"] is None
  assert fitted["threshold"] == tuned["threshold"]  # the final fit is scored at its twin's val choices
  assert fitted["decisions"]["min_size"] == tuned["decisions"]["min_size"]
  assert "val split" in tuned["decisions"]["min_size_source"] and fitted["decisions"]["min_size_source"] == (
      "config eval.min_size")
  train = next(line for line in open(tmp_path / "default_s3_ff.log") if line.startswith("$") and "train.py" in line)
  assert "--config.seed=3" in train and "--config.data.final_fit=True" in train
  assert "| default | False | 1 |" in done.stdout and "| default | True | 1 |" in done.stdout
  log = tmp_path / "default_s3" / "log.jsonl"
  before = log.read_text()
  again = recipe_seeds(*args)  # every report exists: nothing is trained again
  assert again.returncode == 0 and log.read_text() == before
  assert len(open(tmp_path / "results.jsonl").readlines()) == 2


@pytest.mark.slow
def test_an_unknown_arm_is_refused(tmp_path):
  done = recipe_seeds("--arms=nope", f"--out={tmp_path}")
  assert done.returncode != 0 and "--arms takes names from" in done.stderr
  assert not os.listdir(tmp_path)


def test_report_load_reads_a_folder_or_file_and_refuses_in_one_line(tmp_path):
  (tmp_path / "report.json").write_text(json.dumps({"runs": [{"split": "test"}]}))
  assert report.load(str(tmp_path)) == report.load(str(tmp_path / "report.json")) == {"runs": [{"split": "test"}]}
  for text, error in ((None, "cannot read the report"), ("{cut", "not a readable report"),
                      ("[]", "not an evaluation report")):
    folder = tmp_path / f"case{len(text or '')}"
    folder.mkdir()
    if text is not None:
      (folder / "report.json").write_text(text)
    with pytest.raises(InputError, match=error) as e:
      report.load(str(folder))
    assert "\n" not in str(e.value) and str(folder / "report.json") in str(e.value)
