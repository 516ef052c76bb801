"""benchmarks/cv_table.py: folds that never test on a slice they train or validate on, the decision rules on
hand-made probabilities, the paired interval by hand, the table's rows; end to end on synthetic data (slow)."""

import importlib.util
import json
import os

import numpy as np
import pytest

import cv_table
from script_runs import run_script
from unet_jax.errors import InputError
from unet_jax.io import stacks, synthetic


@pytest.mark.parametrize("n, k, val", [(14, 7, 2), (14, 4, 2), (14, 3, 3), (8, 2, 1)])
def test_every_slice_tests_once_apart_from_its_fold_training_and_validation(n, k, val):
  folds = cv_table.assign_folds(n, k, val)
  assert sorted(z for f in folds for z in f.test) == list(range(n))
  for f in folds:
    assert not set(f.test) & set(f.val) and not set(f.test) & set(f.train) and not set(f.val) & set(f.train)
    assert sorted(f.test + f.val + f.train) == list(range(n))
    assert len(f.val) == val and f.train
    for run in (f.test, f.val):  # contiguous
      assert list(run) == list(range(run[0], run[-1] + 1))
    assert f.val[0] == f.test[-1] + 1 or f.val[-1] == f.test[0] - 1  # next to its test slices
  assert [len(f.test) for f in folds] == sorted((len(f.test) for f in folds), reverse=True)


def test_seven_folds_of_the_fourteen_vnc_slices():
  folds = cv_table.assign_folds(14, 7, 2)
  assert (folds[0].test, folds[0].val) == ((0, 1), (2, 3))
  assert (folds[5].test, folds[5].val) == ((10, 11), (12, 13))
  assert (folds[6].test, folds[6].val) == ((12, 13), (10, 11))  # nothing after the last: the slices before it
  assert folds[6].train == tuple(range(10))


@pytest.mark.parametrize("k, val", [(1, 2), (15, 1), (7, 0), (7, 12), (4, 10), (3, 8)])
def test_folds_without_training_or_validation_slices_are_refused(k, val):
  with pytest.raises(InputError, match="--folds|--val_slices"):
    cv_table.assign_folds(14, k, val)


def test_a_fold_is_written_once_with_its_val_slices_last(tmp_path):
  image = np.arange(6 * 8 * 8, dtype=np.uint8).reshape(6, 8, 8)
  mask = np.where(image % 3 == 0, 255, 0).astype(np.uint8)
  fold = cv_table.assign_folds(6, 3, 1)[1]  # test 2-3, val 4, train 0, 1, 5
  cv_table.write_fold(str(tmp_path), image, mask, fold)
  read = lambda name: stacks.read_stack(str(tmp_path / name))
  np.testing.assert_array_equal(read("training.tif"), image[[0, 1, 5, 4]])
  np.testing.assert_array_equal(read("training_groundtruth.tif"), mask[[0, 1, 5, 4]])
  np.testing.assert_array_equal(read("testing_groundtruth.tif"), mask[[2, 3]])
  np.testing.assert_array_equal(read("val_test.tif"), image[[4, 2, 3]])
  assert json.load(open(tmp_path / "fold.json")) == {"index": 1, "test": [2, 3], "val": [4], "train": [0, 1, 5]}
  written = os.path.getmtime(tmp_path / "training.tif")
  cv_table.write_fold(str(tmp_path), image, mask, fold)
  assert os.path.getmtime(tmp_path / "training.tif") == written


def test_the_run_order_alternates_the_sides():
  runs = cv_table.plan(cv_table.assign_folds(6, 3, 1), [0, 1], [10, 40])
  assert [r.side for r in runs] == ["ours", "script"] * 12
  assert [(r.seed, r.fold.index, r.minutes) for r in runs[:4]] == [(0, 0, 10), (0, 0, 10), (0, 0, 40), (0, 0, 40)]
  assert runs[0].name == "ours_f0_s0_10min"


def test_kept_scores_count_as_done_elsewhere_unless_made_with_other_commands(tmp_path):
  run = cv_table.plan(cv_table.assign_folds(6, 3, 1), [0], [10])[1]  # the script on fold 0
  first, second, records = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "records")
  scores = {"side": "script", "fold": 0, "rules": {"0.5": {"dice": 0.8, "f1": 0.7}}}
  os.makedirs(os.path.join(first, "runs", run.name))
  with open(os.path.join(first, "runs", run.name, "scores.json"), "w") as f:
    json.dump(scores, f)
  cv_table.keep(run, first, records, cv_table.commands(run, first, "configs/unet2d.py:vnc", [], []))
  kept = json.load(open(os.path.join(records, run.name + ".json")))
  assert kept["commands"][0][:3] == ["{PYTHON}", "benchmarks/torch_train.py", "--data={OUT}/folds/fold_0"]
  elsewhere = cv_table.commands(run, second, "configs/unet2d.py:vnc", [], [])
  assert cv_table.restore(run, second, records, elsewhere)
  assert json.load(open(os.path.join(second, "runs", run.name, "scores.json"))) == scores
  assert not cv_table.restore(run, second, records, elsewhere)  # OUT has it: left as it is
  other = cv_table.commands(run, str(tmp_path / "c"), "configs/unet2d.py:vnc", [], ["--batch=4"])
  with pytest.raises(InputError, match=f"{run.name}.json keeps run {run.name} made with other commands"):
    cv_table.restore(run, str(tmp_path / "c"), records, other)


def test_script_only_budgets_run_the_script_alone_after_the_shared_ones():
  runs = cv_table.plan(cv_table.assign_folds(6, 3, 1), [0], [10, 20], [40])
  assert [(r.side, r.minutes) for r in runs[:5]] == [("ours", 10), ("script", 10), ("ours", 20), ("script", 20),
                                                     ("script", 40)]
  assert len(runs) == 15
  assert cv_table.comparisons([10, 20], [40]) == [(10, 10), (20, 20), (10, 20), (10, 40)]
  assert cv_table.comparisons([10, 40]) == [(10, 10), (40, 40), (10, 40)]
  assert cv_table.comparisons([10]) == [(10, 10)] and cv_table.comparisons([10], [40]) == [(10, 10), (10, 40)]


def test_without_the_script_at_our_budgets_it_runs_only_at_its_own():
  folds = cv_table.assign_folds(6, 3, 1)
  runs = cv_table.plan(folds, [0], [10], [40], ["rt"], script_at_budgets=False)
  assert [(r.side, r.fold.index, r.minutes) for r in runs] == [
      (side, k, m) for k in range(3) for side, m in [("ours", 10), ("rt", 10), ("script", 40)]]
  both = cv_table.plan(folds, [0], [10, 40], [40], script_at_budgets=False)  # a shared budget the script keeps
  assert [(r.side, r.minutes) for r in both[:3]] == [("ours", 10), ("ours", 40), ("script", 40)]
  assert cv_table.comparisons([10], [40], script_at_budgets=False) == [(10, 40)]
  assert cv_table.comparisons([10, 20], [20], script_at_budgets=False) == [(20, 20), (10, 20)]
  records = [record(side, fold, 0, 10, 0.92 + (side == "rt") * 0.01) for fold in range(3) for side in ("ours", "rt")]
  text = cv_table.table(records, [10], [], ["rt"], script_at_budgets=False)  # the script runs nowhere
  assert "script" not in text and "| 10 | rt | 3 |" in text
  assert "| rt@10 - ours@10 | val | 3 | +0.0100 [+0.0100, +0.0100] |" in text


def test_a_variant_runs_between_ours_and_the_script_with_its_flags_added():
  variants = cv_table.parse_variants(["ff:--config.data.final_fit=True --config.eval.threshold=0.5"])
  assert variants == {"ff": ["--config.data.final_fit=True", "--config.eval.threshold=0.5"]}
  runs = cv_table.plan(cv_table.assign_folds(6, 3, 1), [0], [10], [40], list(variants))
  assert [(r.side, r.minutes) for r in runs[:4]] == [("ours", 10), ("ff", 10), ("script", 10), ("script", 40)]
  ours, ff = (cv_table.commands(r, "out", "configs/unet2d.py:vnc", ["--config.x=1"], [], variants) for r in runs[:2])
  assert "--workdir=out/runs/ff_f0_s0_10min" in ff[0]
  assert [a.replace("ff_", "ours_") for a in ff[0][:-3]] == ours[0][:-1]  # ours' flags, then the variant's
  assert ff[0][-3:] == ["--config.data.final_fit=True", "--config.eval.threshold=0.5", "--config.train.budget_minutes=10"]
  assert {"--config.x=1", "--config.data.final_fit=True", "--config.eval.threshold=0.5"} <= set(ff[1])
  assert cv_table.differences([10], [40], ["ff"]) == [("ours", 10, "script", 10), ("ours", 10, "script", 40),
                                                      ("ff", 10, "script", 10), ("ff", 10, "script", 40),
                                                      ("ff", 10, "ours", 10)]


@pytest.mark.parametrize("spec", ["ours:--config.x=1", "FF:--config.x=1", "ff:", "ff:--seed=1", "ff"])
def test_bad_variants_are_refused_in_one_line(spec):
  with pytest.raises(InputError, match="--variant=.*write NAME:--config.x=v"):
    cv_table.parse_variants([spec])
  with pytest.raises(InputError, match="--variant="):
    cv_table.parse_variants(["ff:--config.x=1", "ff:--config.y=2"])


def test_the_warm_up_compiles_ours_on_the_first_fold_for_two_steps_then_predicts():
  fold = cv_table.assign_folds(14, 7, 2)[0]
  train, predict = cv_table.warm_up_commands("out", fold, "configs/unet2d.py:vnc", ["--config.x=1"])
  assert train[1] == "train.py" and predict[1] == "evaluate.py"
  assert "--workdir=out/warm_up" in train and "--config.data.root=out/folds/fold_0" in train
  assert train[-2:] == ["--config.train.budget_minutes=0", "--config.train.steps=2"] and "--config.x=1" in train
  assert "--input=out/folds/fold_0/val_test.tif" in predict and "--output_dir=out/warm_up/predicted" in predict
  run = cv_table.Run("ours", fold, 0, 10.0)
  assert cv_table.commands(run, "out", "configs/unet2d.py:vnc", [], [])[0][-1] == "--config.train.budget_minutes=10"


def test_rules_on_probabilities_with_known_thresholds():
  # val: truth at 0.3, background 0.1: the first perfect candidate is 0.15. Test: truth at 0.4.
  mask = np.zeros((2, 32, 32), np.uint8)
  mask[:, 4:14, 4:14] = mask[:, 18:28, 18:28] = 255
  probs = np.where(mask > 0, np.float32([[[0.3]], [[0.4]]]), np.float32(0.1))
  rules = cv_table.score(probs, mask, 1, [round(0.05 * i, 2) for i in range(1, 20)], min_size=20, min_area=20)
  assert [rules[r]["threshold"] for r in ("val", "0.5", "halfway")] == [0.15, 0.5, 0.325]
  assert rules["val"]["dice"] == rules["val"]["f1"] == rules["halfway"]["dice"] == rules["halfway"]["f1"] == 1.0
  assert rules["0.5"]["dice"] == rules["0.5"]["f1"] == rules["0.5"]["recall"] == 0.0


def test_paired_interval_by_hand():
  # Fold means 0.02, 0, 0.02: mean 0.013333, sd 0.011547, t(0.975, 2) = 4.302653, half width 0.028684.
  d = cv_table.paired_interval({0: [0.01, 0.03], 1: [0.0], 2: [0.02]})
  assert d["n"] == 3 and d["mean"] == pytest.approx(0.013333, abs=1e-6)
  assert (d["low"], d["high"]) == pytest.approx((0.013333 - 0.028684, 0.013333 + 0.028684), abs=1e-6)
  assert cv_table.paired_interval({0: [0.01]}) == {"mean": 0.01, "low": None, "high": None, "n": 1}


def record(side, fold, seed, minutes, dice):
  rules = {r: {"threshold": 0.4, "dice": dice, "precision": 0.9, "recall": 0.9, "f1": dice - 0.1} for r in cv_table.RULES}
  return {"side": side, "fold": fold, "seed": seed, "minutes": minutes, "wall_minutes": minutes + 1, "steps": 100,
          "rules": rules}


def test_table_pairs_each_fold_and_seed_and_compares_the_smallest_budget_with_the_largest():
  records = [record(side, fold, seed, m, 0.9 + 0.01 * fold + (0.002 if side == "ours" else 0.0) + 0.001 * (m == 40))
             for fold in range(3) for seed in (0, 1) for m in (10, 40) for side in cv_table.SIDES]
  text = cv_table.table(records, [10, 40])
  assert "| 10 | ours | 6 | 0.9120 / 0.812 |" in text and "| 40 | script | 6 | 0.9110 / 0.811 |" in text
  assert "| ours@10 - script@10 | val | 3 | +0.0020 [+0.0020, +0.0020] |" in text
  assert "| ours@10 - script@40 | halfway | 3 | +0.0010 [+0.0010, +0.0010] |" in text
  assert "ours@40 - script@10" not in text


def test_the_table_shows_the_script_alone_at_its_own_budgets():
  records = [record(side, fold, 0, 10, 0.92) for fold in range(3) for side in cv_table.SIDES]
  records += [record("script", fold, 0, 40, 0.91) for fold in range(2)]  # a third fold not run yet
  text = cv_table.table(records, [10], [40])
  assert "| 40 | script | 2 |" in text and "| 40 | ours |" not in text
  assert "| ours@10 - script@40 | val | 2 | +0.0100 [+0.0100, +0.0100] |" in text


def test_the_table_pairs_a_variant_with_ours_and_with_the_script():
  records = [record(side, fold, 0, 10, 0.9 + 0.01 * fold + {"ours": 0.002, "ff": 0.005, "script": 0.0}[side])
             for fold in range(3) for side in ("ours", "ff", "script")]
  text = cv_table.table(records, [10], variants=["ff"])
  assert "| 10 | ff | 3 | 0.9150 / 0.815 |" in text
  assert "| ff@10 - script@10 | 0.5 | 3 | +0.0050 [+0.0050, +0.0050] |" in text
  assert "| ff@10 - ours@10 | val | 3 | +0.0030 [+0.0030, +0.0030] |" in text


installed = lambda *modules: all(importlib.util.find_spec(m) for m in modules)


@pytest.mark.slow
@pytest.mark.skipif(not installed("torch", "monai"), reason="torch and monai are not installed "
                    "(pip install -r benchmarks/requirements.txt)")
def test_a_synthetic_table_end_to_end_then_resumed(tmp_path):
  args = ["--data=synthetic", "--folds=2", "--val_slices=1", "--minutes=0.05", "--ours_config=configs/unet2d.py:tiny",
          "--script_flags=--patch=32 --window=32 --batch=2 --measure_steps=2", f"--out={tmp_path}",
          "--config.train.budget_measure_steps=2", "--variant=ff:--config.data.final_fit=True "
          "--config.eval.checkpoint=latest --config.eval.select_threshold=False --config.eval.threshold=0.5",
          f"--records={tmp_path / 'records'}"]
  bad = run_script("benchmarks/cv_table.py", *args, "--run_folds=2")
  assert bad.returncode != 0 and "--run_folds=2: fold indices run from 0 to 1" in bad.stderr + bad.stdout
  first = run_script("benchmarks/cv_table.py", *args, "--run_folds=1", timeout=1800)  # one sitting: fold 1
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  assert "runs/ours_f0" not in first.stdout and "| 0.05 | ours | 1 |" in (tmp_path / "table.md").read_text()
  assert first.stdout.index("warm_up") < first.stdout.index("runs/ours_f1")  # the warm-ups come first
  assert first.stdout.index("warm_up_ff") < first.stdout.index("runs/ours_f1") < first.stdout.index("runs/ff_f1")
  done = run_script("benchmarks/cv_table.py", *args, timeout=1800)  # the next sitting: the folds left
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert "runs/ours_f1" not in done.stdout and "runs/ours_f0" in done.stdout  # fold 1 is not rerun
  image, mask = synthetic.make_stack(0, *cv_table.SYNTHETIC)
  for k in range(2):
    folder = tmp_path / "folds" / f"fold_{k}"
    fold = json.load(open(folder / "fold.json"))
    assert not set(fold["test"]) & set(fold["train"] + fold["val"])
    np.testing.assert_array_equal(stacks.read_stack(str(folder / "training.tif")), image[fold["train"] + fold["val"]])
    np.testing.assert_array_equal(stacks.read_stack(str(folder / "testing_groundtruth.tif")), mask[fold["test"]])
  lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  assert sorted((r["side"], r["fold"]) for r in lines) == [(s, k) for s in ("ff", "ours", "script") for k in range(2)]
  for r in lines:
    assert set(r["rules"]) == set(cv_table.RULES) and r["steps"] > 0
    assert all(0 <= v["dice"] <= 1 and 0 <= v["f1"] <= 1 for v in r["rules"].values())
  assert (tmp_path / "warm_up" / "predicted" / "probabilities.tif").is_file()
  assert (tmp_path / "warm_up_ff" / "predicted" / "probabilities.tif").is_file()
  table = (tmp_path / "table.md").read_text()
  assert "| 0.05 | ours | 2 |" in table and "| 0.05 | script | 2 |" in table
  assert "| ours@0.05 - script@0.05 | 0.5 | 2 | " in table and "| 0.05 | ff | 2 |" in table
  assert "| ff@0.05 - ours@0.05 | 0.5 | 2 | " in table and "| ff@0.05 - script@0.05 | 0.5 | 2 | " in table
  again = run_script("benchmarks/cv_table.py", *args)
  assert again.returncode == 0 and "$ " not in again.stdout  # every run was finished: nothing reruns
  assert (tmp_path / "table.md").read_text() == table
  moved = run_script("benchmarks/cv_table.py", *args[:6], f"--out={tmp_path / 'elsewhere'}", *args[7:])
  assert moved.returncode == 0 and "$ " not in moved.stdout and "restored from" in moved.stdout  # from --records
  assert (tmp_path / "elsewhere" / "table.md").read_text() == table
  assert os.path.isfile(tmp_path / "runs" / "script_f1_s0_0.05min" / "predicted" / "probabilities.tif")
