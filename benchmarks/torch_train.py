"""A plain PyTorch training script, as a user would write it: the time-to-accuracy peer of issue 14.

  .venv/bin/python benchmarks/torch_train.py --minutes=20 [--seed=0] [--data=../shared/data/vnc]
  .venv/bin/python benchmarks/torch_train.py --steps=1200           # a fixed step count instead of a budget
  pip install -r benchmarks/requirements.txt   # torch, monai

The U-Net of benchmarks/torch_unet.py in our default shape (depth 4, 16 features, BatchNorm, 1x1 conv + bilinear
upsampling; channels_last, --threads intra-op threads, default one per core), trained on all ten VNC training
slices (training.tif / training_groundtruth.tif, masks 0/255), on the GPU when PyTorch sees one (--device; there
cuDNN autotunes its kernels, as a user's GPU script would, and runs are not bitwise reproducible): batches of
--batch uniformly random --patch crops, each one of the 8 flips/90-degree rotations, loss BCE + (1 - soft Dice) of
the batch (torch_unet.bce_dice_loss: our train.loss='bce_dice', smooth 1), Adam with a cosine learning rate from
--lr to 0. The schedule is sized to the budget as our `train.budget_minutes` does: the first step (warm-up) is
excluded, the next --measure_steps are timed, and the total step count is fixed from them and printed (a budget
shorter than those steps overruns); the run is deterministic given that count (--steps=N skips the timing). The
clock counts training only; scoring is paused out of it.

At every 10 % of the steps the test stack (testing.tif) is segmented with MONAI's
sliding_window_inference (--window, --overlap, Gaussian blending, sigma 0.125, batches of 8 windows)
and scored at threshold 0.5 over all its pixels; each checkpoint prints a JSON line
{"minutes", "step", "test_dice", "precision", "recall"} (minutes of training so far), for
time-to-accuracy curves. Skipped, with a message, when the data folder is absent.

For cross-validation (benchmarks/cv_table.py): --val_slices=N holds the last N slices of training.tif out of
training, as our data.val_slices does, and --probabilities=PATH writes the final weights' probabilities of
those slices then the test slices (f16[N + Z_test, H, W], the same sliding window) as a TIFF, so decision
thresholds can be compared afterwards without retraining.
"""

import json
import math
import os
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

import common

FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")

flags.DEFINE_string("data", common.VNC, "Folder of " + ", ".join(FILES) + ".")
flags.DEFINE_float("minutes", 20.0, "Training budget in wall minutes.")
flags.DEFINE_integer("steps", 0, "A fixed step count instead (no timing).")
flags.DEFINE_integer("measure_steps", 10, "Steps timed to size the schedule.")
flags.DEFINE_integer("checkpoints", 10, "Test scores at this many evenly spaced steps.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and the batches.")
flags.DEFINE_integer("threads", 0, "Intra-op threads (0: one per core, PyTorch's default).")
flags.DEFINE_integer("batch", 8, "Patches per batch.")
flags.DEFINE_integer("patch", 256, "Patch side, pixels.")
flags.DEFINE_float("lr", 1e-3, "Peak learning rate of the cosine schedule.")
flags.DEFINE_integer("window", 256, "Sliding window (square).")
flags.DEFINE_float("overlap", 0.5, "Sliding-window overlap.")
flags.DEFINE_integer("val_slices", 0, "The last N training slices are held out of training (validation).")
flags.DEFINE_string("probabilities", "", "Write the final val then test probabilities here (TIFF, float16).")
flags.DEFINE_string("device", "auto", "cpu | cuda | auto (cuda when PyTorch sees a GPU, else cpu).")
FLAGS = flags.FLAGS


def load(folder: str) -> tuple[np.ndarray, ...]:
  """(train image, train mask, test image, test mask) as f32[Z, H, W]: images / 255, masks > 0."""
  import tifffile  # pylint: disable=g-import-not-at-top
  stacks = [tifffile.imread(os.path.join(folder, name)) for name in FILES]
  return tuple((s > 0 if "groundtruth" in name else s / 255.0).astype(np.float32) for name, s in zip(FILES, stacks))


def random_batch(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, batch: int,
                 patch: int) -> tuple[np.ndarray, np.ndarray]:
  """`batch` random crops f32[B, 1, patch, patch] of image and mask, each flipped/rotated by one of the 8."""
  images, masks = [], []
  for _ in range(batch):
    z = rng.integers(image.shape[0])
    y, x = rng.integers(image.shape[1] - patch + 1), rng.integers(image.shape[2] - patch + 1)
    k, flip = rng.integers(4), rng.integers(2)
    for out, stack in ((images, image), (masks, mask)):
      crop = np.rot90(stack[z, y:y + patch, x:x + patch], k)
      out.append(np.flip(crop, 1) if flip else crop)
  return np.stack(images)[:, None].copy(), np.stack(masks)[:, None].copy()


def segment(net: Any, image: np.ndarray, window: int, overlap: float, device: Any) -> np.ndarray:
  """Probabilities f32[Z, H, W] of a stack f32[Z, H, W], slice by slice with MONAI's sliding window on `device`."""
  import torch  # pylint: disable=g-import-not-at-top
  from monai.inferers import sliding_window_inference  # pylint: disable=g-import-not-at-top
  net.eval()
  probs = np.zeros(image.shape, np.float32)
  with torch.inference_mode():
    for z in range(image.shape[0]):
      x = torch.from_numpy(image[z])[None, None].to(device).contiguous(memory_format=torch.channels_last)
      probs[z] = sliding_window_inference(x, (window, window), 8, lambda p: torch.sigmoid(net(p.contiguous(
          memory_format=torch.channels_last))), overlap=overlap, mode="gaussian", sigma_scale=0.125)[0, 0].cpu().numpy()
  net.train()
  return probs


def test_scores(probs: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """Dice, precision and recall at 0.5 over the whole stack."""
  pred, truth = probs >= 0.5, mask > 0
  tp, fp, fn = np.sum(pred & truth), np.sum(pred & ~truth), np.sum(~pred & truth)
  return {"test_dice": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1),
          "recall": tp / max(tp + fn, 1)}


def cosine(total: list[int]) -> Callable[[int], float]:
  """Learning-rate factor at a step: cosine from 1 to 0 over total[0] steps (read when called: it is fixed late)."""
  return lambda step: 0.5 * (1 + math.cos(math.pi * min(step / max(total[0], 1), 1.0)))


def main(argv: list[str]) -> None:
  del argv
  missing = [f for f in FILES if not os.path.isfile(os.path.join(FLAGS.data, f))]
  if missing:
    print(f"skipped: {FLAGS.data} lacks {', '.join(missing)} (the VNC data lives in ../shared/data/vnc, "
          "outside the repository)")
    return
  import torch  # pylint: disable=g-import-not-at-top
  from torch_unet import TorchUNet, bce_dice_loss  # pylint: disable=g-import-not-at-top
  torch.manual_seed(FLAGS.seed)
  device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if FLAGS.device == "auto" else FLAGS.device)
  if device.type == "cuda":  # what a user's GPU script does: cuDNN picks its fastest kernels, not reproducible ones
    torch.backends.cudnn.benchmark = True
  else:
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(FLAGS.threads or os.cpu_count() or 1)
  rng = np.random.default_rng(FLAGS.seed)
  train_image, train_mask, test_image, test_mask = load(FLAGS.data)
  if not 0 <= FLAGS.val_slices < train_image.shape[0]:
    raise app.UsageError(f"--val_slices={FLAGS.val_slices} leaves no training slices of {train_image.shape[0]}")
  held = train_image.shape[0] - FLAGS.val_slices
  val_image, train_image, train_mask = train_image[held:], train_image[:held], train_mask[:held]
  net = TorchUNet(depth=4, base_features=16, norm="batch", upsample="resize").to(device,
                                                                                 memory_format=torch.channels_last)
  optim = torch.optim.Adam(net.parameters(), lr=FLAGS.lr)
  total = [FLAGS.steps or 10 ** 9]  # fixed after the timed steps when training to a budget
  schedule = torch.optim.lr_scheduler.LambdaLR(optim, cosine(total))
  where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
  print(f"torch {torch.__version__}, {where}; {train_image.shape[0]} training slices of "
        f"{train_image.shape[1]} x {train_image.shape[2]}; batch {FLAGS.batch} of {FLAGS.patch}²; "
        + (f"{FLAGS.steps} steps" if FLAGS.steps else f"budget {FLAGS.minutes:g} min"), flush=True)
  spaced = lambda n: {max(1, round(n * (i + 1) / FLAGS.checkpoints)) for i in range(FLAGS.checkpoints)}
  trained, step, checkpoints, timed_from = 0.0, 0, spaced(FLAGS.steps) if FLAGS.steps else set(), 0.0
  while step < total[0]:
    start = time.perf_counter()
    image, mask = (torch.from_numpy(a).to(device).contiguous(memory_format=torch.channels_last)
                   for a in random_batch(rng, train_image, train_mask, FLAGS.batch, FLAGS.patch))
    optim.zero_grad(set_to_none=True)
    loss = bce_dice_loss(net(image), mask)
    loss.backward()
    optim.step()
    schedule.step()
    if device.type == "cuda":
      torch.cuda.synchronize()  # the clock counts the step's GPU work, not only its launch
    trained += time.perf_counter() - start
    step += 1
    if not FLAGS.steps and step == 1:
      timed_from = trained
    if not FLAGS.steps and step == 1 + FLAGS.measure_steps:
      per_step = (trained - timed_from) / FLAGS.measure_steps
      total[0] = step + max(0, int((60 * FLAGS.minutes - trained) / per_step))
      checkpoints = spaced(total[0])
      print(f"{per_step:.2f} s per step: {total[0]} steps in {FLAGS.minutes:g} min", flush=True)
    if step in checkpoints or step == total[0]:
      probs = segment(net, test_image, FLAGS.window, FLAGS.overlap, device)
      scores = test_scores(probs, test_mask)
      print(json.dumps({"minutes": trained / 60, "step": step, "loss": loss.item(), **scores}), flush=True)
  if FLAGS.probabilities:
    import tifffile  # pylint: disable=g-import-not-at-top
    stack = np.concatenate([segment(net, val_image, FLAGS.window, FLAGS.overlap, device), probs])
    tifffile.imwrite(FLAGS.probabilities + ".tmp", stack.astype(np.float16), photometric="minisblack")
    os.replace(FLAGS.probabilities + ".tmp", FLAGS.probabilities)  # complete or absent: cv_table.py resumes on it
  print(f"after {step} steps, {trained / 60:.1f} min of training: test Dice {scores['test_dice']:.4f}, precision "
        f"{scores['precision']:.4f}, recall {scores['recall']:.4f} (threshold 0.5, {FLAGS.window}² windows, overlap "
        f"{FLAGS.overlap:g})")


if __name__ == "__main__":
  app.run(main)
