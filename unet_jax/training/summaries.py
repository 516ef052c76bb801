"""TensorBoard summaries of a training run, in `<workdir>/tensorboard/` next to `log.jsonl`.

`log.jsonl` stays the record that reports and benchmarks read; these event files are for watching a
run (`tensorboard --logdir runs/`): loss and learning rate at log steps, validation scores and a few
validation slices (image | truth | probability, side by side) at each validation. Written with
tensorboardX, which needs no TensorFlow.
"""

import os
from typing import Any

import numpy as np
import tensorboardX

DIR_NAME = "tensorboard"
IMAGE_SLICES = 3  # validation slices pictured at each validation
IMAGE_PX = 256  # longest side of each pictured slice (strided down when larger)


def summary_dir(workdir: str) -> str:
  """The folder of a workdir's TensorBoard event files."""
  return os.path.join(workdir, DIR_NAME)


def picture(image: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """f32[H, W] slices -> f32[1, h, 3w] in [0, 1]: image | truth | probability, strided to IMAGE_PX."""
  stride = max(1, -(-max(image.shape) // IMAGE_PX))
  row = np.concatenate([image, truth.astype(np.float32), probs], axis=1)[::stride, ::stride]
  return np.clip(row, 0.0, 1.0)[None]


class Summaries:
  """Writes a run's TensorBoard summaries; does nothing when disabled (train.tensorboard=False, or
  a process other than 0)."""

  def __init__(self, workdir: str, enabled: bool):
    self.writer = tensorboardX.SummaryWriter(summary_dir(workdir)) if enabled else None

  def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
    """One scalar per key, tagged `prefix/key`."""
    if self.writer:
      for name, value in values.items():
        self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

  def slices(self, step: int, image: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> None:
    """IMAGE_SLICES evenly spaced slices of f32[Z, H, W] stacks, one image each, tagged `val/slice_<z>`."""
    if self.writer:
      for z in np.linspace(0, image.shape[0] - 1, min(IMAGE_SLICES, image.shape[0])).round().astype(int):
        self.writer.add_image(f"val/slice_{z}", picture(image[z], truth[z], probs[z]), step, dataformats="CHW")

  def close(self) -> None:
    if self.writer:
      self.writer.close()
