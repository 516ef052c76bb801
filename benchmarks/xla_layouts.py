"""XLA CPU flags and convolution layouts for the train step, A/B against the current default.

  .venv/bin/python benchmarks/xla_layouts.py [--variants=default,vector512,...] [--rounds=7] [--steps=2]

Each variant (VARIANTS: XLA flags, and the 3x3 convolutions' weight gradient) runs in its own worker
subprocess, since XLA flags are read once per process; 'default' is what train.py runs (the flags of
`parallel.use_host_devices`), and a variant's own flags win over those. A worker (about 1.2 GB) builds `trainer.make_parallel_train_step` for
configs/unet2d.py:vnc (batch 8 of 256², 2 host devices, augmentation off so only the network is
timed), compiles it and waits. The parent then asks the workers in turn, the order rotating round by
round, for --steps timed steps each, so background load hits all variants alike. Printed per
variant: the median step time, the median over rounds of (variant / default) step time within the
round (the ratio that counts on a shared machine; < 1 is faster), and from an XLA trace of
--profile_steps steps (`train_profile.traced_op_ms`) the share of traced op time spent in layout
copies (transposes). The first variant is the baseline of the ratios.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import app, flags

import common
from unet_jax.training import parallel


class Variant(NamedTuple):
  """XLA flags added to (or replacing) the defaults, and how 3x3 convolutions get their weight gradient."""
  xla_flags: tuple[str, ...] = ()
  weight_grad: str = "xla"  # xla (jax's transposed convolution) | rows (`rows_weight_grad`, a custom_vjp)


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "vector512": Variant(("--xla_cpu_prefer_vector_width=512",)),
    "ynn+eltwise": Variant(("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_ELTWISE",)),
    "ynn+reduce": Variant(("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_REDUCE",)),
    "xnn_greedy": Variant(("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",)),
    "no_xnnpack": Variant(("--xla_cpu_use_xnnpack=false",)),
    "concurrency_scheduler": Variant(("--xla_cpu_enable_concurrency_optimized_scheduler=true",)),  # the old default
    "onednn_custom_call": Variant(("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true")),
    "no_fusion_emitters": Variant(("--xla_cpu_use_fusion_emitters=false",)),
    "rows_weight_grad": Variant(weight_grad="rows"),
}
MARK = "@@"  # prefix of the worker's answer lines on stdout

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", ",".join(VARIANTS), "Comma-separated VARIANTS names; the first is the baseline.")
flags.DEFINE_integer("rounds", 7, "Rounds; each times every variant once, in rotating order.")
flags.DEFINE_integer("steps", 2, "Timed steps per variant and round.")
flags.DEFINE_integer("profile_steps", 2, "Traced steps per variant for the transpose share (0: no trace).")
flags.DEFINE_string("worker", "", "Internal: run as the worker of this variant.")


def step_config() -> Any:
  """configs/unet2d.py:vnc without augmentation."""
  from unet_jax.training import augment  # pylint: disable=g-import-not-at-top
  config = common.load_config("configs/unet2d.py:vnc")
  config.augment.flips = False
  for name in augment.PROB_FIELDS:
    config.augment[name] = 0.0
  return config


def rows_weight_grad(conv: Callable) -> Callable:
  """`conv` (lax.conv_general_dilated), but 3x3 'SAME' NHWC/HWIO convolutions get a custom weight gradient.

  dW[i, j, c, o] = sum over b, y, x of x_pad[b, y + i, x + j, c] * dy[b, y, x, o]. JAX computes it as a
  convolution whose batch is c and whose feature is b, so XLA transposes both x and dy (b moved
  innermost). Here the zero-padded images are stacked along the rows ([1, B * (H + 2), W + 2, C], a
  reshape) and dy likewise with two zero rows after each image, so the rows between images add
  nothing: dy needs no transpose and x a 2D one ([rows * cols, C] -> [C, rows * cols]).
  """
  import jax
  import jax.numpy as jnp
  spec = ("NHWC", "HWIO", "NHWC")

  def same3x3(x: jax.Array, k: jax.Array) -> jax.Array:
    return conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=spec)

  @jax.custom_vjp
  def conv3x3(x: jax.Array, k: jax.Array) -> jax.Array:
    return same3x3(x, k)

  def backward(residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, k = residuals
    b, h, w, c = x.shape
    (dx,) = jax.vjp(lambda x: same3x3(x, k), x)[1](dy)
    rows = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(1, b * (h + 2), w + 2, c)
    dy_rows = jnp.pad(dy, ((0, 0), (0, 2), (0, 0), (0, 0))).reshape(1, b * (h + 2), w, dy.shape[-1])[:, :-2]
    dk = conv(rows, dy_rows, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "NHWC"))  # [C, 3, 3, O]
    return dx, dk.transpose(1, 2, 0, 3)

  conv3x3.defvjp(lambda x, k: (same3x3(x, k), (x, k)), backward)

  def patched(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, **kwargs):
    plain = (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)
             and padding in ("SAME", ((1, 1), (1, 1)), [(1, 1), (1, 1)]) and feature_group_count == 1 and all(v is None for v in kwargs.values())
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, spec))
    if plain:
      return conv3x3(lhs, rhs)
    return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, **kwargs)
  return patched


def answer(payload: dict[str, Any]) -> None:
  """Sends one answer line to the parent."""
  print(MARK + json.dumps(payload), flush=True)


def worker(name: str) -> None:
  """Compiles the variant's train step, then answers 'time N' and 'profile N' lines from stdin."""
  variant = VARIANTS[name]
  config = step_config()
  parallel.add_xla_flags(*variant.xla_flags)
  parallel.use_host_devices(config.host_devices)
  import jax
  if variant.weight_grad == "rows":
    jax.lax.conv_general_dilated = rows_weight_grad(jax.lax.conv_general_dilated)  # flax looks it up per call
  import numpy as np
  import train_profile
  from unet_jax.io import data, synthetic
  from unet_jax.network.model import build_model
  from unet_jax.training import trainer
  mesh = parallel.make_mesh()
  patch = trainer.patch_shape(config)
  split = data.make_split(*synthetic.make_stack(0, config.train.batch_size, patch))
  batch = parallel.shard_batch(mesh, {"image": split.image[..., None],
                                      "mask": split.mask[..., None].astype(np.float32)})
  holder = {"state": parallel.replicate(mesh, trainer.create_train_state(
      config, build_model(config.model, parallel.AXIS), jax.random.PRNGKey(0)))}
  key = jax.random.PRNGKey(1)
  compiled = trainer.make_parallel_train_step(mesh, config).lower(holder["state"], batch, key).compile()

  def step() -> None:
    holder["state"], metrics = compiled(holder["state"], batch, key)
    jax.block_until_ready(metrics)
  step()
  answer({"ready": name, "devices": mesh.size, "xla_flags": os.environ.get("XLA_FLAGS", "")})
  for line in sys.stdin:
    command, count = line.split()
    if command == "time":
      seconds = []
      for _ in range(int(count)):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
      answer({"seconds": seconds})
    else:
      instructions, opcodes = train_profile.parse_hlo(compiled.as_text())
      per_op = train_profile.traced_op_ms(instructions, step, int(count))
      answer({"categories": dict(train_profile.category_ms(per_op, instructions, opcodes))})


def read_answer(process: subprocess.Popen) -> dict[str, Any]:
  """The worker's next answer line (other output passes through to stderr)."""
  for line in process.stdout:
    if line.startswith(MARK):
      return json.loads(line[len(MARK):])
    sys.stderr.write(line)
  raise RuntimeError(f"a worker exited early (exit status {process.wait()})")


def ask(process: subprocess.Popen, command: str) -> dict[str, Any]:
  """Sends `command` to a worker and returns its answer."""
  process.stdin.write(command + "\n")
  process.stdin.flush()
  return read_answer(process)


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker)
    return
  names = FLAGS.variants.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    sys.exit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
  workers = {n: subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={n}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for n in names}
  print(f"load average {os.getloadavg()[0]:.2f}; compiling {len(names)} variants", flush=True)
  for name, process in workers.items():
    ready = read_answer(process)
    print(f"  {name}: {ready['devices']} devices, XLA_FLAGS={ready['xla_flags']!r}", flush=True)
  seconds = {n: [] for n in names}
  ratios = {n: [] for n in names}
  for r in range(FLAGS.rounds):
    this_round = {}
    for name in names[r % len(names):] + names[:r % len(names)]:
      this_round[name] = statistics.median(ask(workers[name], f"time {FLAGS.steps}")["seconds"])
      seconds[name].append(this_round[name])
    for name in names:
      ratios[name].append(this_round[name] / this_round[names[0]])
    print(f"  round {r + 1}: " + ", ".join(f"{n} {s:.3f}" for n, s in this_round.items()), flush=True)
  shares = {}
  for name in names:
    if FLAGS.profile_steps:
      categories = ask(workers[name], f"profile {FLAGS.profile_steps}")["categories"]
      shares[name] = categories.get("layout copies (transpose)", 0.0) / sum(categories.values())
    workers[name].stdin.close()
    workers[name].wait()
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  print(f"| variant | change | step s (median) | step time vs {names[0]} (median of rounds) | "
        "transposes, share of traced op time |")
  print("|---|---|---|---|---|")
  for name in names:
    variant = VARIANTS[name]
    change = " ".join(variant.xla_flags) or ("custom_vjp: `rows_weight_grad`" if variant.weight_grad == "rows" else "")
    share = f"{shares[name]:.1%}" if name in shares else "-"
    print(f"| {name} | {change or '(defaults)'} | {statistics.median(seconds[name]):.3f} | "
          f"{statistics.median(ratios[name]):.3f} | {share} |")


if __name__ == "__main__":
  app.run(main)
