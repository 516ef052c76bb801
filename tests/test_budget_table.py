"""benchmarks/budget_table.py on the tiny config (our side only): a named variant's --config.x=v overrides
reach train.py, evaluate.py and time_to_accuracy.py, and its table is written beside the default's."""

import functools
import json
import os

import pytest

from script_runs import run_script

budget_table = functools.partial(run_script, "benchmarks/budget_table.py")


@pytest.mark.slow
def test_a_named_variant_carries_its_overrides_to_every_script(tmp_path):
  out = tmp_path / "table"
  done = budget_table("--minutes=0.1", f"--out={out}", "--parts=ours", "--config=configs/unet2d.py:tiny",
                      "--name=fixed", "--config.train.budget_measure_steps=2", "--config.eval.threshold=0.3")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  report = json.load(open(out / "fixed_0.1" / "report" / "report.json"))
  assert {r["threshold"]["value"] for r in report["runs"]} == {0.3}  # evaluate.py got the override
  curve = [json.loads(line) for line in open(out / "fixed_0.1_curve.jsonl")]
  assert curve and {r["threshold"] for r in curve} == {0.3}  # and time_to_accuracy.py
  budget = [json.loads(line) for line in open(out / "fixed_0.1" / "log.jsonl") if '"budget"' in line]
  assert budget and budget[0]["step"] == 2  # and train.py (its budget measured over 2 steps)
  table = (out / "table_fixed.md").read_text()
  assert "| 0.1 | 0." in table and "not run" in table  # our scores; the peer was not run
  assert not (out / "table.md").exists()


@pytest.mark.slow
def test_overrides_without_a_name_are_refused(tmp_path):
  done = budget_table("--minutes=1", f"--out={tmp_path}", "--config.eval.threshold=0.3")
  assert done.returncode != 0 and "own --name" in done.stderr
  assert not os.listdir(tmp_path)
