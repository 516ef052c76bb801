"""benchmarks/compare_dims.py end to end on the tiny volume: two modes trained and scored, the table written into a
doc's block and the README's table into its own, a rerun that only rebuilds them, the same table from the kept
records in another OUT, one mode's table alone, and a rescoring that evaluates the trained runs again and keeps
their old reports."""

import json

import pytest

from script_runs import run_script

KEY = "compare_dims tiny_iso 0.2min"  # one block per data set and budget
BLOCKS = (f"# Results\n<!-- {KEY} begin -->\nold table\n<!-- {KEY} end -->\n"
          f"<!-- {KEY} rows begin -->\nold rows\n<!-- {KEY} rows end -->\nkept\n")


@pytest.mark.slow
def test_two_modes_are_scored_and_both_tables_written_then_reused(tmp_path):
  doc = tmp_path / "page.md"
  doc.write_text(BLOCKS)
  args = ["--data=tiny_iso", "--minutes=0.2", "--modes=2d,3d", "--seeds=0", f"--out={tmp_path / 'runs'}",
          f"--doc={doc}", f"--readme={doc}", f"--records={tmp_path / 'records'}"]
  done = run_script("benchmarks/compare_dims.py", *args, timeout=1200)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
  assert sorted(r["mode"] for r in rows) == ["2d", "3d"]
  assert all(0.0 <= r["test_dice"] <= 1.0 and r["steps"] > 0 for r in rows)
  text = doc.read_text()
  assert "old table" not in text and "old rows" not in text and text.endswith("kept\n")
  table = text.split(f"<!-- {KEY} begin -->\n")[1].split(f"<!-- {KEY} end -->")[0]
  readme = text.split(f"<!-- {KEY} rows begin -->\n")[1].split(f"<!-- {KEY} rows end")[0]
  assert table == (tmp_path / "runs" / "table.md").read_text()
  assert readme == (tmp_path / "runs" / "readme_rows.md").read_text()
  lines = readme.splitlines()
  assert lines[1] == "|---|---|---|---|" and len(lines) == 4  # header, rule, one row per mode
  dice_2d = next(r["test_dice"] for r in rows if r["mode"] == "2d")
  assert lines[2].startswith("| 2D (1 seed) |") and f"{dice_2d:.4f}" in lines[2]
  again = run_script("benchmarks/compare_dims.py", *args, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "$ python" not in again.stdout + again.stderr  # every stage was done: nothing trained again
  assert doc.read_text() == text
  moved = run_script("benchmarks/compare_dims.py", *args[:4], f"--out={tmp_path / 'elsewhere'}", args[-1], timeout=600)
  assert moved.returncode == 0, moved.stderr[-2000:]
  assert "restored from" in moved.stdout and "$ python" not in moved.stdout  # the kept runs are not trained again
  assert (tmp_path / "elsewhere" / "table.md").read_text().split("\n\n`python")[0] == table.split("\n\n`python")[0]
  one = run_script("benchmarks/compare_dims.py", *args[:2], "--modes=2d", *args[3:5], timeout=600)
  assert one.returncode == 0, one.stderr[-2000:]
  assert "paired difference" not in (tmp_path / "runs" / "table.md").read_text()  # nothing to pair with
  rescored = run_script("benchmarks/compare_dims.py", *args, "--rescore", timeout=900)
  assert rescored.returncode == 0, rescored.stderr[-2000:]
  assert "--mode=predict" in rescored.stdout and "--steps=6" not in rescored.stdout  # inference timed again
  for mode in ("2d", "3d"):
    assert (tmp_path / "runs" / f"{mode}_s0" / "report.1" / "report.json").is_file()  # the old report is kept
    log = (tmp_path / "runs" / f"{mode}_s0.log").read_text()
    assert log.count(" evaluate.py ") == 2 and log.count(" train.py ") == 1  # scored again, not trained again
  again_rows = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
  assert [r["test_dice"] for r in again_rows] == pytest.approx([r["test_dice"] for r in rows], abs=1e-6)


def test_a_doc_without_the_budgets_block_is_refused_before_anything_runs(tmp_path):
  """The table of each data set and budget has its own block: a missing one stops the script at once with the
  lines to add, not after hours of runs."""
  doc = tmp_path / "page.md"
  doc.write_text(BLOCKS)  # the 0.2-minute blocks; these runs would be 0.5 minutes
  done = run_script("benchmarks/compare_dims.py", "--data=tiny_iso", "--minutes=0.5", f"--out={tmp_path / 'runs'}",
                    f"--doc={doc}", timeout=300)
  assert done.returncode != 0
  assert "has no block '<!-- compare_dims tiny_iso 0.5min begin -->'" in done.stderr and "add those" in done.stderr
  assert not (tmp_path / "runs").exists() and doc.read_text() == BLOCKS
