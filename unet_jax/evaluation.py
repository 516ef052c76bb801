"""Evaluation of a trained checkpoint on a labelled stack: predictions, scores, files."""

import json
import os
from typing import Any

import jax
import numpy as np

from unet_jax import checkpoint, data, inference, metrics, trainer
from unet_jax.model import build_model


def load_variables(config: Any, workdir: str) -> tuple[dict[str, Any], int]:
  """Model variables {'params', 'batch_stats'} from the config's checkpoint choice, and its step."""
  state = trainer.create_train_state(config, build_model(config.model), jax.random.PRNGKey(0))
  tree, step = checkpoint.restore(workdir, trainer.state_tree(state), config.eval.checkpoint)
  return {"params": tree["params"], "batch_stats": tree["batch_stats"]}, step


def evaluate(config: Any, workdir: str, split_name: str = "test", output_dir: str | None = None) -> dict[str, Any]:
  """Segments `split_name` with the trained model; writes scores.json and prediction.tif."""
  output_dir = output_dir or os.path.join(workdir, f"eval_{split_name}")
  variables, step = load_variables(config, workdir)
  split = data.load_splits(config.data)[split_name]
  probs = inference.predict_stack(build_model(config.model), variables, split.image, config.eval)
  pred = probs >= config.eval.threshold
  report = {"split": split_name, "checkpoint": config.eval.checkpoint, "step": step,
            "threshold": config.eval.threshold, "shape": list(split.image.shape),
            **metrics.pixel_scores(pred, split.mask)}
  os.makedirs(output_dir, exist_ok=True)
  data.write_stack(os.path.join(output_dir, "prediction.tif"), pred.astype(np.uint8) * 255)
  with open(os.path.join(output_dir, "scores.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
