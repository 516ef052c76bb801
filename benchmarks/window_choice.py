"""The default inference window and engine, chosen by speed at equal validation Dice.

  python benchmarks/window_choice.py [--workdir=runs/vnc_budget20] [--slices=4]
      [--windows=256:0.5,256:0,512:0.5,512:0,1024:0] [--tolerance=0.002]

For each window:overlap setting (Gaussian blending, batches of --batch windows) and each engine
(`eval.engine`: xla, onnx), the configs/unet2d.py:vnc U-Net restored from --workdir segments the
VALIDATION slices of ../shared/data/vnc (the last training slices, `data.load_splits`; never the
test stack), scored by pixel Dice at `eval.threshold`, and --slices slices of unlabeled.tif more
for timing. Every slice is timed after a warm-up slice (compilation, ONNX conversion); all
settings and engines run in turn on each slice, the order rotating slice by slice, so background load
hits all alike.
Prints seconds per 1024^2 slice (median), val Dice, and the fastest setting among those within
--tolerance of the best val Dice. XLA flags as in evaluate.py (`parallel.use_host_devices`, then
`parallel.use_inference_kernels`: XLA's own CPU convolutions). On a shared machine only times of one run compare.
"""

import os
import time

import numpy as np
from absl import app, flags

import common

flags.DEFINE_string("workdir", os.path.join(common.ROOT, "runs", "vnc_budget20"), "Training run whose checkpoint "
                    "segments.")
flags.DEFINE_string("windows", "256:0.5,256:0,512:0.5,512:0,1024:0", "window:overlap settings, comma-separated.")
flags.DEFINE_integer("slices", 4, "unlabeled.tif slices timed on top of the val slices.")
flags.DEFINE_integer("batch", 8, "Windows per batch (eval.batch_size).")
flags.DEFINE_float("tolerance", 0.002, "Val Dice counted as equal within this.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
  parallel.use_host_devices(0)  # before JAX starts its backends, as evaluate.py (unet_jax/cli/common.py)
  parallel.use_inference_kernels()
  import jax  # pylint: disable=g-import-not-at-top
  from unet_jax.inference import engines, windows
  from unet_jax.io import checkpoint, data, stacks  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import abstract_variables, build_model  # pylint: disable=g-import-not-at-top
  from unet_jax.scores import metrics

  config = common.load_config("configs/unet2d.py:vnc")
  config.data.root = common.VNC
  if not os.path.isdir(config.data.root):
    print(f"skipped: {config.data.root} is absent")
    return
  model = build_model(config.model)
  variables, step = checkpoint.restore_variables(FLAGS.workdir, abstract_variables(model), config.eval.checkpoint)
  val = data.load_splits(config.data)["val"]
  with stacks.StackReader(common.DATA) as reader:
    extra = np.stack([reader[z] for z in range(FLAGS.slices + 1)])
  warm_slice, timed_slices = extra[0], [*val.image, *extra[1:]]
  threshold = config.eval.threshold
  print(f"checkpoint {FLAGS.workdir} (step {step}); val split {val.image.shape}, {len(timed_slices)} timed slices "
        f"({len(val.image)} val + {FLAGS.slices} unlabeled) per setting and engine; threshold {threshold}; "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)

  runs = {}
  for setting in FLAGS.windows.split(","):
    size, overlap = int(setting.split(":")[0]), float(setting.split(":")[1])
    window = (size, size)
    count = len(windows.window_grid(val.image.shape[1:], window, overlap))
    for engine in engines.ENGINES:
      runs[size, overlap, engine] = (count, lambda image, p=windows.predictor(model, "none", engine), w=window, o=overlap,
                                     b=min(FLAGS.batch, count): np.asarray(
                                         windows.sliding_window_predict(p, variables, image, w, o, "gaussian", b)))
  for _, predict in runs.values():
    predict(warm_slice)
  keys = list(runs)
  seconds, probs = {k: [] for k in keys}, {k: [] for k in keys}
  for i, image in enumerate(timed_slices):  # every setting on each slice, the order rotating slice by slice
    for key in keys[i % len(keys):] + keys[:i % len(keys)]:
      start = time.perf_counter()
      out = runs[key][1](image)
      seconds[key].append(time.perf_counter() - start)
      if i < len(val.image):
        probs[key].append(out)
  rows = []
  for key in keys:
    dice = metrics.pixel_scores(np.stack(probs[key]) >= threshold, val.mask)["dice"]
    rows.append((*key[:2], runs[key][0], key[2], float(np.median(seconds[key])), dice))

  best = max(r[5] for r in rows)
  fastest = min((r for r in rows if r[5] >= best - FLAGS.tolerance), key=lambda r: r[4])
  reference = next((r[4] for r in rows if r[:2] == (256, 0.5) and r[3] == "xla"), rows[0][4])
  print(f"\nload average after: {os.getloadavg()[0]:.2f}")
  print("| window | overlap | windows per slice | engine | s per 1024² slice | speed vs 256²/0.5 XLA | val Dice |")
  print("|---|---|---|---|---|---|---|")
  for size, overlap, count, engine, sec, dice in rows:
    mark = "**" if (size, overlap, engine) == fastest[:2] + (fastest[3],) else ""
    print(f"| {size}² | {overlap:g} | {count} | {engine} | {mark}{sec:.3f}{mark} | {reference / sec:.2f}x | {dice:.4f} |")
  print(f"fastest within {FLAGS.tolerance} of the best val Dice ({best:.4f}): window {fastest[0]}, overlap "
        f"{fastest[1]:g}, engine {fastest[3]} ({fastest[4]:.3f} s per slice, val Dice {fastest[5]:.4f})")


if __name__ == "__main__":
  app.run(main)
