"""benchmarks/seed_runs.py without training: the alternating run order, a stage that is done is not run again and
a record made with other arguments is refused, the step time leaves out compiling and validation passes, the
t interval of a paired difference by hand, and the Markdown block a table is written into."""

import json
import os

import pytest

from benchmarks import seed_runs  # the repository root is on pytest's pythonpath (pyproject.toml)
from unet_jax.errors import InputError


def test_arms_alternate_which_goes_first_seed_by_seed():
  assert seed_runs.run_order(["2d", "3d"], [0, 1, 2]) == [(0, "2d"), (0, "3d"), (1, "3d"), (1, "2d"), (2, "2d"),
                                                         (2, "3d")]
  three = seed_runs.run_order(["a", "b", "c"], [5, 6, 7])
  assert [arm for _, arm in three] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # a Latin square
  assert seed_runs.parse_seeds(["0", "2"]) == [0, 2]
  for bad in (["x"], ["1", "1"], ["-1"], []):
    with pytest.raises(InputError, match="--seeds=.*distinct integers"):
      seed_runs.parse_seeds(bad)


def test_finished_stages_are_skipped_and_other_arguments_refused(tmp_path):
  out, marker = str(tmp_path), tmp_path / "ran"
  append = ["-c", f"open({str(marker)!r}, 'a').write('x')"]
  stages = {"train": append, "evaluate": append}
  seconds = seed_runs.run_stages(out, "3d_s0", stages)
  assert set(seconds) == {"train", "evaluate"} and marker.read_text() == "xx"
  assert seed_runs.run_stages(out, "3d_s0", stages) == seconds and marker.read_text() == "xx"  # done: nothing runs
  record = json.loads((tmp_path / "3d_s0.json").read_text())
  del record["seconds"]["evaluate"]  # as if killed during the evaluation
  (tmp_path / "3d_s0.json").write_text(json.dumps(record))
  seed_runs.run_stages(out, "3d_s0", stages)
  assert marker.read_text() == "xxx"  # only the evaluation ran again
  with pytest.raises(InputError, match="3d_s0.json records run 3d_s0 with other arguments; use another --out"):
    seed_runs.run_stages(out, "3d_s0", {"train": [*append, "--minutes=5"], "evaluate": append})
  assert "$ " in (tmp_path / "3d_s0.log").read_text()


def test_a_redo_runs_the_stage_again_and_an_interrupted_redo_is_not_taken_as_done(tmp_path):
  out, marker = str(tmp_path), tmp_path / "ran"
  stages = {"train": ["-c", f"open({str(marker)!r}, 'a').write('t')"],
            "evaluate": ["-c", f"open({str(marker)!r}, 'a').write('e')"]}
  seed_runs.run_stages(out, "2d_s0", stages)
  seed_runs.run_stages(out, "2d_s0", stages, redo=("evaluate",))
  assert marker.read_text() == "tee"  # the training is kept
  failing = {**stages, "evaluate": ["-c", "raise SystemExit(3)"]}
  (tmp_path / "2d_s0.json").write_text(json.dumps({"stages": failing, "seconds": {"train": 1.0, "evaluate": 2.0}}))
  with pytest.raises(RuntimeError):
    seed_runs.run_stages(out, "2d_s0", failing, redo=("evaluate",))
  assert json.loads((tmp_path / "2d_s0.json").read_text())["seconds"] == {"train": 1.0}  # to run again


def test_kept_records_restore_a_finished_run_on_another_machine(tmp_path):
  """A run kept in the committed folder and restored into another OUT is done there: its stages do not run
  again, its log and report read back the same; a run OUT already has is left alone."""
  first, second, records, marker = tmp_path / "a", tmp_path / "b", tmp_path / "records", tmp_path / "ran"
  first.mkdir()
  append = ["-c", f"open({str(marker)!r}, 'a').write('x')"]
  stages = {out: {"train": [*append, f"--workdir={out / '2d_s1'}"], "evaluate": append} for out in (first, second)}
  seed_runs.run_stages(str(first), "2d_s1", stages[first])
  (first / "2d_s1" / "report").mkdir(parents=True)
  (first / "2d_s1" / "report" / "report.json").write_text('{"runs": []}')
  (first / "2d_s1" / "log.jsonl").write_text('{"step": 3, "loss": 1.0, "minutes": 0.5}\n')
  seed_runs.keep(str(first), "2d_s1", str(records))
  kept = json.loads((records / "2d_s1.json").read_text())
  assert kept["stages"]["train"][-1] == "--workdir={OUT}/2d_s1" and str(first) not in json.dumps(kept)
  assert seed_runs.restore(str(records), str(second), ["2d_s1", "3d_s1"]) == ["2d_s1"]  # 3d_s1 was never kept
  assert seed_runs.run_stages(str(second), "2d_s1", stages[second]) == kept["seconds"] and marker.read_text() == "xx"
  assert (second / "2d_s1" / "report" / "report.json").read_text() == '{"runs": []}'
  assert seed_runs.training_time(str(second / "2d_s1"))["steps"] == 3
  (second / "2d_s1.json").write_text("mine")
  assert seed_runs.restore(str(records), str(second), ["2d_s1"]) == [] and (second / "2d_s1.json").read_text() == "mine"


def test_step_time_leaves_out_compiling_and_validation(tmp_path):
  records = [{"event": "start", "step": 0, "minutes": 0.0},
             {"step": 10, "loss": 1.0, "minutes": 5.0},  # compiling: left out
             {"step": 20, "loss": 0.9, "minutes": 6.0},  # 6 s / step
             {"step": 20, "minutes": 8.0, "val_dice": 0.5},  # a validation pass
             {"step": 30, "loss": 0.8, "minutes": 9.0},  # 6 s / step
             {"event": "start", "step": 30, "minutes": 9.0},  # resumed: compiles again
             {"step": 40, "loss": 0.7, "minutes": 12.0},
             {"step": 50, "loss": 0.6, "minutes": 14.0}]  # 12 s / step
  with open(os.path.join(tmp_path, "log.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  assert seed_runs.training_time(str(tmp_path)) == {"steps": 50, "minutes": 14.0, "s_per_step": 6.0}


def test_paired_difference_and_its_text():
  d = seed_runs.paired_difference({0: 0.90, 1: 0.92, 2: 0.91}, {0: 0.91, 1: 0.94, 2: 0.94, 3: 0.5})
  # seeds 0-2 only: differences 0.01, 0.02, 0.03; mean 0.02, sd 0.01, t(0.975, 2) = 4.302653
  assert d["n"] == 3 and d["estimate"] == pytest.approx(0.02)
  assert (d["low"], d["high"]) == pytest.approx((0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-6)
  assert seed_runs.with_interval(d, signed=True) == "+0.0200 [-0.0048, +0.0448]"
  assert seed_runs.with_interval(seed_runs.summary({0: 0.5})) == "0.5000"  # one seed: no interval
  assert seed_runs.mean_text({0: {"s": None}}, "s", 2) == "-"


def test_the_table_replaces_only_its_block(tmp_path):
  doc = tmp_path / "page.md"
  doc.write_text("# Page\n<!-- compare_dims vnc begin -->\nold\n<!-- compare_dims vnc end -->\nkept\n")
  seed_runs.replace_block(str(doc), "compare_dims vnc", "| a |\n|---|\n")
  assert doc.read_text() == ("# Page\n<!-- compare_dims vnc begin -->\n| a |\n|---|\n<!-- compare_dims vnc end -->\n"
                             "kept\n")
  with pytest.raises(InputError, match="has no block '<!-- compare_dims iso begin -->'"):
    seed_runs.replace_block(str(doc), "compare_dims iso", "x")
  with pytest.raises(InputError, match="cannot read .*missing.md.*existing Markdown file"):
    seed_runs.check_block(str(tmp_path / "missing.md"), "compare_dims vnc")
