"""Cost of on-device augmentation in the jitted train step (default 2D config: batch 8 of 256 x 256):

  python benchmarks/augment_overhead.py [--repeats=10] [--config.train.batch_size=16 ...]

Builds `trainer.make_parallel_train_step` three times, once per preset of unet_jax/training/augment.py:
the config's `augment` block as it is ("full"), dihedral flips only ("flips"), everything off ("none"). After compiling (not timed) it runs the three steps in turn, `repeats` times,
so that background load hits all three alike, and prints the median step time of each and the
overhead over "none", and the time of the "full" augmentation alone (jitted on the same sharded
batch, outside the step), a figure less blurred by background load. Under vmap a transform's cost does not depend on its probability (both
outcomes are computed and one is selected), so "full" is also the worst case.
"""

import statistics
import sys
import time

from absl import app, flags

import common
from unet_jax.training import parallel

FLAGS = common.define_config("configs/unet2d.py")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_integer("repeats", 10, "Timed steps per preset (the median is reported).")


def main(argv: list[str]) -> None:
  del argv
  parallel.use_host_devices(FLAGS.config.host_devices)  # before JAX starts its backends
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from unet_jax.io import synthetic
  from unet_jax.network.model import build_model
  from unet_jax.training import augment, trainer

  config = FLAGS.config
  if config.model.ndim != 2:
    sys.exit(f"error: this benchmark builds 2D batches; got model.ndim={config.model.ndim}")
  presets = {name: config.copy_and_resolve_references() for name in augment.PRESETS}
  for name, preset in presets.items():
    augment.apply_preset(preset, name)

  mesh = parallel.make_mesh()
  batch_size, patch = config.train.batch_size, trainer.patch_shape(config)
  images, masks = synthetic.make_stack(0, batch_size, patch)
  batch = parallel.shard_batch(mesh, {"image": (images[..., None] / 255.0).astype(np.float32),
                                      "mask": (masks[..., None] / 255.0).astype(np.float32)})
  key = jax.random.PRNGKey(0)
  states, steps = {}, {}
  for name, preset in presets.items():
    state = trainer.create_train_state(preset, build_model(preset.model, parallel.AXIS), key)
    states[name], steps[name] = parallel.replicate(mesh, state), trainer.make_parallel_train_step(mesh, preset)
    t0 = time.perf_counter()
    for i in range(2):  # compile, then one warm step
      states[name], metrics = steps[name](states[name], batch, jax.random.fold_in(key, i))
      jax.block_until_ready(metrics)
    print(f"{name}: compiled and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)

  augment_only = jax.jit(lambda k, b: augment.augment_batch(jax.random.split(k, batch_size), b["image"],
                                                             b["mask"], config.augment))
  jax.block_until_ready(augment_only(key, batch))
  times = {name: [] for name in [*presets, "augment"]}
  for i in range(FLAGS.repeats):
    for name in presets:
      t0 = time.perf_counter()
      states[name], metrics = steps[name](states[name], batch, jax.random.fold_in(key, 100 + i))
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(augment_only(jax.random.fold_in(key, 100 + i), batch))
    times["augment"].append(time.perf_counter() - t0)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {batch_size} of {patch}, "
        f"model depth {config.model.depth} base {config.model.base_features}, {FLAGS.repeats} steps each")
  base = statistics.median(times["none"])
  for name in presets:
    median = statistics.median(times[name])
    print(f"{name:6s} median step {1000 * median:8.1f} ms  (min {1000 * min(times[name]):8.1f} ms)  "
          f"overhead vs none {100 * (median / base - 1):+6.1f} %")
  alone = statistics.median(times["augment"])
  print(f"full augmentation alone: median {1000 * alone:.1f} ms = {100 * alone / base:.1f} % of the 'none' step")


if __name__ == "__main__":
  app.run(main)
