"""A plain PyTorch training script, as a user would write it: the time-to-accuracy peer of issue 14.

  .venv/bin/python benchmarks/torch_train.py --minutes=20 [--seed=0] [--data=../shared/data/vnc]
  .venv/bin/python benchmarks/torch_train.py --steps=1200           # a fixed step count instead of a budget
  pip install -r benchmarks/requirements.txt   # torch, monai

The U-Net of benchmarks/torch_unet.py in our default shape (depth 4, 16 features, BatchNorm, 1x1 conv +
bilinear upsampling; channels_last, --threads intra-op threads, default one per core), trained on all ten VNC training
slices (training.tif / training_groundtruth.tif, masks 0/255): batches of --batch uniformly random
--patch crops, each one of the 8 flips/90-degree rotations, loss BCE + (1 - soft Dice) of the batch,
Adam with a cosine learning rate from --lr to 0. The schedule is sized to the budget as our
`train.budget_minutes` does: the first step (warm-up) is excluded, the next --measure_steps are timed,
and the total step count is fixed from them and printed (a budget shorter than those steps overruns);
the run is deterministic given that count (--steps=N skips the timing). The clock counts training
only; scoring is paused out of it.

At every 10 % of the steps the test stack (testing.tif) is segmented with MONAI's
sliding_window_inference (--window, --overlap, Gaussian blending, sigma 0.125, batches of 8 windows)
and scored at threshold 0.5 over all its pixels; each checkpoint prints a JSON line
{"minutes", "step", "test_dice", "precision", "recall"} (minutes of training so far), for
time-to-accuracy curves. Skipped, with a message, when the data folder is absent.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmarks.torch_unet, from anywhere
VNC = os.path.join(ROOT, "..", "shared", "data", "vnc")
FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=VNC, help="folder of " + ", ".join(FILES))
  parser.add_argument("--minutes", type=float, default=20.0, help="training budget in wall minutes")
  parser.add_argument("--steps", type=int, default=0, help="a fixed step count instead (no timing)")
  parser.add_argument("--measure_steps", type=int, default=10, help="steps timed to size the schedule")
  parser.add_argument("--checkpoints", type=int, default=10, help="test scores at this many evenly spaced steps")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core, PyTorch's default)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--patch", type=int, default=256)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--window", type=int, default=256, help="sliding window (square)")
  parser.add_argument("--overlap", type=float, default=0.5)
  return parser.parse_args()


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


def bce_dice_loss(logits: Any, mask: Any) -> Any:
  """Mean binary cross-entropy + (1 - soft Dice of the batch, smooth 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  probs = torch.sigmoid(logits)
  dice = (2 * (probs * mask).sum() + 1) / (probs.sum() + mask.sum() + 1)
  return torch.nn.functional.binary_cross_entropy_with_logits(logits, mask) + 1 - dice


def test_scores(net: Any, image: np.ndarray, mask: np.ndarray, window: int, overlap: float) -> dict[str, float]:
  """Dice, precision and recall at 0.5 over the whole stack, segmented slice by slice with MONAI."""
  import torch  # pylint: disable=g-import-not-at-top
  from monai.inferers import sliding_window_inference  # pylint: disable=g-import-not-at-top
  net.eval()
  tp = fp = fn = 0
  with torch.inference_mode():
    for z in range(image.shape[0]):
      x = torch.from_numpy(image[z])[None, None].contiguous(memory_format=torch.channels_last)
      probs = sliding_window_inference(x, (window, window), 8, lambda p: torch.sigmoid(net(p.contiguous(
          memory_format=torch.channels_last))), overlap=overlap, mode="gaussian", sigma_scale=0.125)
      pred, truth = probs[0, 0].numpy() >= 0.5, mask[z] > 0
      tp, fp, fn = tp + np.sum(pred & truth), fp + np.sum(pred & ~truth), fn + np.sum(~pred & truth)
  net.train()
  return {"test_dice": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1),
          "recall": tp / max(tp + fn, 1)}


def cosine(total: list[int]) -> Callable[[int], float]:
  """Learning-rate factor at a step: cosine from 1 to 0 over total[0] steps (read when called: it is fixed late)."""
  return lambda step: 0.5 * (1 + math.cos(math.pi * min(step / max(total[0], 1), 1.0)))


def main() -> None:
  args = parse_args()
  missing = [f for f in FILES if not os.path.isfile(os.path.join(args.data, f))]
  if missing:
    print(f"skipped: {args.data} lacks {', '.join(missing)} (the VNC data lives in ../shared/data/vnc, "
          "outside the repository)")
    return
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks.torch_unet import TorchUNet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(args.seed)
  torch.use_deterministic_algorithms(True, warn_only=True)
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  rng = np.random.default_rng(args.seed)
  train_image, train_mask, test_image, test_mask = load(args.data)
  net = TorchUNet(depth=4, base_features=16, norm="batch", upsample="resize").to(memory_format=torch.channels_last)
  optim = torch.optim.Adam(net.parameters(), lr=args.lr)
  total = [args.steps or 10 ** 9]  # fixed after the timed steps when training to a budget
  schedule = torch.optim.lr_scheduler.LambdaLR(optim, cosine(total))
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {train_image.shape[0]} training slices of "
        f"{train_image.shape[1]} x {train_image.shape[2]}; batch {args.batch} of {args.patch}²; "
        + (f"{args.steps} steps" if args.steps else f"budget {args.minutes:g} min"), flush=True)
  spaced = lambda n: {max(1, round(n * (i + 1) / args.checkpoints)) for i in range(args.checkpoints)}
  trained, step, checkpoints, timed_from = 0.0, 0, spaced(args.steps) if args.steps else set(), 0.0
  while step < total[0]:
    start = time.perf_counter()
    image, mask = (torch.from_numpy(a).contiguous(memory_format=torch.channels_last)
                   for a in random_batch(rng, train_image, train_mask, args.batch, args.patch))
    optim.zero_grad(set_to_none=True)
    loss = bce_dice_loss(net(image), mask)
    loss.backward()
    optim.step()
    schedule.step()
    trained += time.perf_counter() - start
    step += 1
    if not args.steps and step == 1:
      timed_from = trained
    if not args.steps and step == 1 + args.measure_steps:
      per_step = (trained - timed_from) / args.measure_steps
      total[0] = step + max(0, int((60 * args.minutes - trained) / per_step))
      checkpoints = spaced(total[0])
      print(f"{per_step:.2f} s per step: {total[0]} steps in {args.minutes:g} min", flush=True)
    if step in checkpoints or step == total[0]:
      scores = test_scores(net, test_image, test_mask, args.window, args.overlap)
      print(json.dumps({"minutes": trained / 60, "step": step, "loss": loss.item(), **scores}), flush=True)
  print(f"after {step} steps, {trained / 60:.1f} min of training: test Dice {scores['test_dice']:.4f}, precision "
        f"{scores['precision']:.4f}, recall {scores['recall']:.4f} (threshold 0.5, {args.window}² windows, overlap "
        f"{args.overlap:g})")


if __name__ == "__main__":
  main()
