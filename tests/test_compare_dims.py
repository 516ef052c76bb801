"""benchmarks/compare_dims.py end to end on the tiny volume: two modes trained and scored, the table written into a
doc's block and the README's table into its own, and a rerun that only rebuilds them."""

import json

import pytest

from script_runs import run_script

BLOCKS = ("# Results\n<!-- compare_dims tiny_iso begin -->\nold table\n<!-- compare_dims tiny_iso end -->\n"
          "<!-- compare_dims tiny_iso rows begin -->\nold rows\n<!-- compare_dims tiny_iso rows end -->\nkept\n")


@pytest.mark.slow
def test_two_modes_are_scored_and_both_tables_written_then_reused(tmp_path):
  doc = tmp_path / "page.md"
  doc.write_text(BLOCKS)
  args = ["--data=tiny_iso", "--minutes=0.2", "--modes=2d,3d", "--seeds=0", f"--out={tmp_path / 'runs'}",
          f"--doc={doc}", f"--readme={doc}"]
  done = run_script("benchmarks/compare_dims.py", *args, timeout=1200)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()]
  assert sorted(r["mode"] for r in rows) == ["2d", "3d"]
  assert all(0.0 <= r["test_dice"] <= 1.0 and r["steps"] > 0 for r in rows)
  text = doc.read_text()
  assert "old table" not in text and "old rows" not in text and text.endswith("kept\n")
  table = text.split("<!-- compare_dims tiny_iso begin -->\n")[1].split("<!-- compare_dims tiny_iso end -->")[0]
  readme = text.split("<!-- compare_dims tiny_iso rows begin -->\n")[1].split("<!-- compare_dims tiny_iso rows end")[0]
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
