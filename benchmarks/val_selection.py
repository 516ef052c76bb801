"""Does a checkpoint or threshold chosen on the val split carry over to unseen slices? Two-fold within val.

  python benchmarks/val_selection.py --config=configs/unet2d.py:vnc --workdir=runs/budget_table/ours_40

Every kept checkpoint of the run predicts each val slice (the eval settings of evaluate.py: window,
TTA, engine). Then each val slice in turn chooses and the other val slices judge, for these policies:
  best+chosen   the checkpoint of best Dice on the choosing slices, at the threshold best there (the
                default under eval.checkpoint=best and eval.select_threshold=True)
  best@fixed    the checkpoint of best Dice on the choosing slices at eval.threshold
  latest+chosen the last checkpoint, at the threshold best on the choosing slices
  latest@fixed  the last checkpoint at eval.threshold (nothing chosen)
It prints each policy's Dice on the judging slices, per fold and averaged, and writes them with
--json_out. Only val slices are read, so the result may decide the evaluation policy; the test split
is never touched.
"""

import json
import sys

import numpy as np
from absl import app, flags

import common
from unet_jax.scores import metrics
from unet_jax.training import parallel

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_string("workdir", None, "Training run whose kept checkpoints are compared.")
flags.DEFINE_string("json_out", "", "Also write the per-fold results here as JSON.")
flags.mark_flags_as_required(["workdir"])

POLICIES = ("best+chosen", "best@fixed", "latest+chosen", "latest@fixed")


def choose(counts: np.ndarray, choosing: list[int], judging: list[int], fixed: int) -> dict[str, float]:
  """Judging-slice Dice of each policy; `counts` is i64[checkpoints, slices, thresholds, 4], `fixed` the index
  of eval.threshold among the thresholds."""
  on_choosing, on_judging = (metrics.dice_from_counts(counts[:, s].sum(1)) for s in (choosing, judging))  # [C, T]
  best_t = on_choosing.argmax(1)  # per checkpoint: the threshold best on the choosing slices
  best_c = int(on_choosing[np.arange(len(counts)), best_t].argmax())
  best_c_fixed = int(on_choosing[:, fixed].argmax())
  return {"best+chosen": float(on_judging[best_c, best_t[best_c]]),
          "best@fixed": float(on_judging[best_c_fixed, fixed]),
          "latest+chosen": float(on_judging[-1, best_t[-1]]),
          "latest@fixed": float(on_judging[-1, fixed])}


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  parallel.use_host_devices(config.host_devices)
  parallel.use_inference_kernels()
  # pylint: disable=g-import-not-at-top
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import checkpoint, data
  from unet_jax.network.model import abstract_variables, build_model
  val = data.load_splits(config.data)["val"]
  if val.image.shape[0] < 2:
    sys.exit(f"the val split has {val.image.shape[0]} slice(s); two-fold selection needs at least 2 "
             "(raise data.val_fraction)")
  thresholds = sorted(set(config.eval.threshold_candidates) | {config.eval.threshold})
  fixed = thresholds.index(config.eval.threshold)
  model = build_model(config.model)
  steps = checkpoint.saved_steps(FLAGS.workdir)
  counts = []
  for step in steps:
    variables, _ = checkpoint.restore_variables(FLAGS.workdir, abstract_variables(model), step=step)
    probs = Predictor.create(model, variables, config.eval, step).raw_probabilities(val.image)
    counts.append([metrics.threshold_counts(p[None], m[None], thresholds) for p, m in zip(probs, val.mask)])
    print(f"step {step}: val slice Dice at {config.eval.threshold} "
          f"{[round(float(d), 4) for d in metrics.dice_from_counts(np.asarray(counts[-1])[:, fixed])]}", flush=True)
  counts = np.asarray(counts)  # [checkpoints, slices, thresholds, 4]
  folds = []
  for s in range(counts.shape[1]):
    rest = [i for i in range(counts.shape[1]) if i != s]
    folds.append({"choosing": [s], "judging": rest, **choose(counts, [s], rest, fixed)})
  print(f"{FLAGS.workdir}: {len(steps)} checkpoints ({steps[0]}..{steps[-1]}), {counts.shape[1]} val slices, "
        f"fixed threshold {config.eval.threshold}; Dice on the judging slices:")
  print("| policy | " + " | ".join(f"choose on slice {f['choosing'][0]}" for f in folds) + " | mean |")
  print("|---|" + "---|" * (len(folds) + 1))
  for policy in POLICIES:
    values = [f[policy] for f in folds]
    print(f"| {policy} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump({"workdir": FLAGS.workdir, "steps": steps, "folds": folds}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
