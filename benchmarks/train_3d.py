"""Speed and memory of a config's train step and of sliding-window inference on its test volume.

  python benchmarks/train_3d.py --config=configs/unet3d.py:vnc [--steps=6]     # train step
  python benchmarks/train_3d.py --config=configs/unet3d.py:vnc --mode=predict   # evaluate.py's inference
  python benchmarks/train_3d.py --config=configs/unet2d.py:vnc                  # the 2D recipe, same measures

--mode=train runs the jitted data-parallel train step of train.py (`trainer.make_parallel_train_step`,
the config's augmentation included, over `host_devices` XLA host devices) on batches from the
config's own training data and sampler: compile seconds, median step, patches and voxels per second.
--mode=predict segments the whole test stack with freshly initialised weights as evaluate.py does
(`Predictor.raw_probabilities`, the eval.* settings, XLA's inference convolutions): seconds per test
volume, the second of two passes (compile excluded). Both print the peak resident memory of the
process (ru_maxrss) in one JSON line; run each config and mode in its own process, so the peak is its own.
"""

import json
import resource
import statistics
import time

from absl import app, flags

import common
from unet_jax.training import parallel

FLAGS = common.define_config("configs/unet3d.py")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_integer("steps", 6, "Timed train steps (after one compile step).")
flags.DEFINE_enum("mode", "train", ["train", "predict"], "Time the train step or test-stack inference.")


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  parallel.use_host_devices(config.host_devices)
  if FLAGS.mode == "predict":
    parallel.use_inference_kernels()  # as evaluate.py
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from unet_jax.config import check as config_check
  from unet_jax.inference import windows
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import data
  from unet_jax.network.model import build_model
  from unet_jax.training import sampling, trainer

  config_check.validate(config)
  mesh = parallel.make_mesh()
  splits = data.load_splits(config.data)
  patch = trainer.patch_shape(config)
  sampler = sampling.PatchSampler.create(splits["train"], patch, config.train.fg_fraction,
                                         config.model.context_slices)
  batches = sampling.batches(sampler, config.train.batch_size, config.seed, 0)
  state = parallel.replicate(mesh, trainer.create_train_state(config, build_model(config.model, parallel.AXIS),
                                                              jax.random.PRNGKey(0)))
  result = {"ndim": config.model.ndim, "context_slices": config.model.context_slices, "devices": mesh.size}
  if FLAGS.mode == "predict":
    model = build_model(config.model)
    variables = parallel.local_replica({"params": state.params, "batch_stats": state.batch_stats})
    test = splits["test"].image
    predictor = Predictor.create(model, variables, config.eval)
    seconds = []
    for _ in range(2):
      start = time.perf_counter()
      predictor.raw_probabilities(test)
      seconds.append(time.perf_counter() - start)
    window = windows.window_settings(config.eval, config.model.ndim)["window"]
    print(json.dumps(result | {"test_shape": list(test.shape), "window": list(window), "overlap": config.eval.overlap,
                               "predict_s_per_volume": round(seconds[1], 2), "first_call_s": round(seconds[0], 2),
                               "peak_rss_mib": round(peak_rss_mib())}))
    return
  step = trainer.make_parallel_train_step(mesh, config)
  times = []
  for i in range(FLAGS.steps + 1):
    batch = parallel.shard_batch(mesh, next(batches))
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times[1:])
  voxels = config.train.batch_size * int(np.prod(patch))
  print(json.dumps(result | {
      "patch": list(patch), "batch": config.train.batch_size, "compile_s": round(times[0] - step_s, 1),
      "step_s": round(step_s, 3), "patches_per_s": round(config.train.batch_size / step_s, 2),
      "mvoxels_per_s": round(voxels / step_s / 1e6, 3), "peak_rss_mib": round(peak_rss_mib())}))


if __name__ == "__main__":
  app.run(main)
