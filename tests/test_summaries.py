"""TensorBoard summaries: a tiny run writes its loss, learning rate, validation scores and slices."""

import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from unet_jax.training import summaries, trainer


def _accumulator(workdir):
  acc = event_accumulator.EventAccumulator(summaries.summary_dir(workdir),
                                           size_guidance={event_accumulator.IMAGES: 0, event_accumulator.SCALARS: 0})
  acc.Reload()
  return acc


@pytest.mark.slow
def test_a_tiny_run_writes_scalars_and_images(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(tiny_config, workdir)
  acc = _accumulator(workdir)
  tags = acc.Tags()
  assert {"train/loss", "train/learning_rate", "val/dice", "val/precision", "val/recall"} <= set(tags["scalars"])
  assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]  # train.log_every = 5
  assert [e.step for e in acc.Scalars("val/dice")] == [10, 20]  # train.eval_every = 10
  assert acc.Scalars("val/dice")[-1].value == np.float32(result["dice"])
  peak = tiny_config.optim.learning_rate  # warm-up of 2 steps, then cosine down over 20 steps
  rates = [e.value for e in acc.Scalars("train/learning_rate")]
  assert rates[0] < peak and rates == sorted(rates, reverse=True)
  images = [t for t in tags["images"] if t.startswith("val/slice_")]
  assert images
  picture = acc.Images(images[0])[-1]
  assert picture.step == 20 and picture.width == 3 * picture.height  # image | truth | probability


def test_picture_strides_large_slices_and_keeps_range():
  image = np.linspace(0, 1, 600 * 500, dtype=np.float32).reshape(600, 500)
  row = summaries.picture(image, np.ones_like(image, np.uint8), np.full_like(image, 2.0))
  assert row.shape == (1, 200, 500) and row.max() == 1.0 and row.min() == 0.0  # stride 3: 600 -> 200


@pytest.mark.slow
def test_switched_off(tiny_config, tmp_path):
  tiny_config.train.tensorboard = False
  tiny_config.train.steps = 10
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config, workdir)
  assert not os.path.exists(summaries.summary_dir(workdir))
