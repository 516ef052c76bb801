"""Train-step throughput of the default 2D U-Net, its fraction of matmul peak, and a PyTorch peer.

  python benchmarks/train_throughput.py [--rounds=5] [--steps=2] [--peer=True] [--parts=False]
      [--augment=False] [--peer_compile=False] [--config=configs/unet2d.py] [--config.host_devices=2]
  pip install -r benchmarks/requirements.txt   # torch==2.13.0 (CPU wheel) for the peer

Ours is `trainer.make_parallel_train_step` (the jitted shard_map step that train.py runs) on one
batch of `train.batch_size` synthetic patches of `train.patch_size`, compiled before timing. The peer
is `benchmarks/torch_unet.py` (same layers) with the same loss (the config's train.loss in PyTorch,
torch_unet.LOSSES, equal to unet_jax/training/losses.py), AdamW with the same hyper-parameters and global-norm clipping, channels_last
(its fastest layout here), eager (torch.compile was no faster here; --peer_compile to try it), run
twice: with one intra-op thread per core and with one thread (more efficient per CPU second, and
much faster when other jobs load the machine); ratios are against the better of the two. When JAX runs on a GPU,
the peer runs on it too (torch/gpu, cuDNN autotuned) and each timed step waits for the GPU to finish.
Augmentation is off in both unless --augment (then only ours augments, with the config's settings).

Ours and the peer run in alternating rounds in one process, so background load hits both alike. Each
step is timed in wall seconds and in CPU seconds of this process (all threads), and the medians are
reported: images per second and images per CPU second (the fair measure on a shared machine), the
FLOPs of one step from XLA's cost analysis, and the achieved FLOP/s as a fraction of this machine's
float32 matmul peak (a jitted batched jnp.dot, one matrix per device, timed the same way). With
--parts, forward only and forward + backward (no optimiser) are also timed for both, on one device,
to show where a gap comes from.
"""

import os
import statistics
import sys
import time
from typing import Any, Callable

from absl import app, flags

import common
# pylint: disable=g-import-not-at-top,wrong-import-position
from unet_jax.training import parallel

FLAGS = common.define_config("configs/unet2d.py")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_integer("rounds", 5, "Alternating rounds (ours, then the peer).")
flags.DEFINE_integer("steps", 2, "Timed steps per round and side.")
flags.DEFINE_bool("peer", True, "Also time the PyTorch twin (needs torch, benchmarks/requirements.txt).")
flags.DEFINE_bool("peer_compile", False, "torch.compile the peer's model (falls back to eager on failure).")
flags.DEFINE_bool("augment", False, "Keep the config's augmentation in our step (the peer never augments).")
flags.DEFINE_bool("parts", False, "Also time forward only and forward + backward, on one device.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matrices of the peak measurement.")

Timer = Callable[[], None]


def timed(fn: Timer) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one call of `fn`."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def median_times(samples: list[tuple[float, float]]) -> tuple[float, float]:
  """Medians of (wall, CPU) seconds."""
  return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def without_augmentation(config: Any) -> Any:
  """A copy of `config` whose augmentation block does nothing (and costs nothing)."""
  from unet_jax.training import augment
  config = config.copy_and_resolve_references()
  config.augment.flips = False
  for name in augment.PROB_FIELDS:
    config.augment[name] = 0.0
  return config


def matmul_peak(size: int, repeats: int = 3) -> tuple[float, float]:
  """Float32 matmul FLOP/s of the whole machine: (per wall second, per CPU second)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = parallel.make_mesh()
  a = jax.device_put(jnp.ones((mesh.size, size, size), jnp.float32) / size, NamedSharding(mesh, P(parallel.AXIS)))
  square = jax.jit(lambda a: a @ a)
  jax.block_until_ready(square(a))
  wall, cpu = median_times([timed(lambda: jax.block_until_ready(square(a))) for _ in range(repeats)])
  flops = 2.0 * size ** 3 * mesh.size
  return flops / wall, flops / cpu


def jax_side(config: Any, batch: dict[str, Any]) -> dict[str, Any]:
  """Our compiled train step (and, with --parts, forward and forward+backward) as timers."""
  import jax
  from unet_jax.network.model import build_model
  from unet_jax.training import losses, trainer
  mesh = parallel.make_mesh()
  state = parallel.replicate(mesh, trainer.create_train_state(
      config, build_model(config.model, parallel.AXIS), jax.random.PRNGKey(0)))
  sharded = parallel.shard_batch(mesh, batch)
  key = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = trainer.make_parallel_train_step(mesh, config).lower(state, sharded, key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = {"state": state}
  variables = jax.device_put(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
                             jax.devices()[0])  # the step donates `state`

  def step() -> None:
    holder["state"], metrics = compiled(holder["state"], sharded, key)
    jax.block_until_ready(metrics)
  step()
  out = {"step": step, "compile_s": compile_s, "flops": cost["flops"] * mesh.size, "devices": mesh.size}
  if FLAGS.parts:
    model, image, mask = build_model(config.model), jax.device_put(batch["image"]), jax.device_put(batch["mask"])
    loss = lambda p: losses.loss_value(config.train.loss, model.apply(
        {**variables, "params": p}, image, train=True, mutable=["batch_stats"])[0], mask, config.train.smooth)
    forward = jax.jit(lambda v: model.apply(v, image, train=True, mutable=["batch_stats"])[0])
    backward = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready((forward(variables), backward(variables["params"])))
    out["forward"] = lambda: jax.block_until_ready(forward(variables))
    out["forward+backward"] = lambda: jax.block_until_ready(backward(variables["params"]))
  return out


def torch_side(config: Any, batch: dict[str, Any], threads: int) -> dict[str, Any]:
  """The PyTorch twin's train step (and, with --parts, forward and forward+backward) as timers: on the CPU with
  `threads` intra-op threads, or on the GPU when `threads` is 0 (each timer then waits for the GPU's work)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch_unet import LOSSES, twin  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import build_model  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if threads == 0 else "cpu")
  torch.backends.cudnn.benchmark = True  # a GPU script's usual setting; no effect on the CPU
  net = twin(build_model(config.model)).to(device, memory_format=torch.channels_last).train()
  model = net
  if FLAGS.peer_compile:
    try:
      model = torch.compile(net)
      model(torch.zeros(2, 1, *batch["image"].shape[1:-1]).contiguous(memory_format=torch.channels_last))
    except Exception as e:  # inductor needs a C++ toolchain; eager is still a fair peer
      print(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); the peer runs eagerly")
      model = net
  to_torch = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)
  wait = torch.cuda.synchronize if device.type == "cuda" else lambda: None
  use_threads = (lambda: torch.set_num_threads(threads)) if threads else lambda: None
  image, mask = to_torch(batch["image"]), to_torch(batch["mask"])
  optim = torch.optim.AdamW(net.parameters(), lr=config.optim.learning_rate,
                            weight_decay=config.optim.weight_decay, eps=1e-8)
  loss_fn = LOSSES[config.train.loss]
  loss = lambda: loss_fn(model(image), mask, config.train.smooth)  # our train.loss, as losses.py computes it

  def step() -> None:
    use_threads()
    optim.zero_grad(set_to_none=True)
    loss().backward()
    if config.optim.grad_clip:
      torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
    optim.step()
    wait()

  def forward() -> None:
    use_threads()
    with torch.no_grad():
      model(image)
    wait()

  def forward_backward() -> None:
    use_threads()
    loss().backward()
    wait()
  step()
  out = {"step": step, "compiled": model is not net}
  if FLAGS.parts:
    out["forward"], out["forward+backward"] = forward, forward_backward
  return out


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  parallel.use_host_devices(config.host_devices)  # before JAX starts its backends
  import jax
  import numpy as np
  from unet_jax.io import data, synthetic
  from unet_jax.training import trainer

  if config.model.ndim != 2:
    sys.exit(f"error: this benchmark builds 2D batches; got model.ndim={config.model.ndim}")
  if FLAGS.peer:
    from torch_unet import LOSSES  # pylint: disable=g-import-not-at-top
    if config.train.loss not in LOSSES:
      sys.exit(f"error: the peer implements train.loss in {sorted(LOSSES)}; got {config.train.loss!r} (or --nopeer)")
  if not FLAGS.augment:
    config = without_augmentation(config)
  batch_size, patch = config.train.batch_size, trainer.patch_shape(config)
  split = data.make_split(*synthetic.make_stack(0, batch_size, patch))
  batch = {"image": split.image[..., None], "mask": split.mask[..., None].astype(np.float32)}

  peak_wall, peak_cpu = matmul_peak(FLAGS.matmul_size)
  sides = {"jax": jax_side(config, batch)}
  if FLAGS.peer and jax.devices()[0].platform == "gpu":
    sides["torch/gpu"] = torch_side(config, batch, 0)  # both on the GPU
  elif FLAGS.peer:
    for threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
      sides[f"torch/{threads}"] = torch_side(config, batch, threads)
  peers = [side for side in sides if side != "jax"]
  parts = [p for p in ("step", "forward", "forward+backward") if p in sides["jax"]]
  samples = {(s, p): [] for s in sides for p in parts}
  for _ in range(FLAGS.rounds):
    for side, timers in sides.items():
      for part in parts:
        samples[side, part] += [timed(timers[part]) for _ in range(FLAGS.steps)]

  ours = sides["jax"]
  m = config.model
  print(f"{jax.device_count()} JAX {jax.devices()[0].platform} device(s) on {os.cpu_count()} cores; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"model depth {m.depth} base {m.base_features} norm {m.norm} upsample {m.upsample} dtype {m.dtype} "
        f"space-to-depth {m.space_to_depth}; "
        f"batch {batch_size} of {patch}; augmentation {'on (ours only)' if FLAGS.augment else 'off'}; "
        f"{FLAGS.rounds} rounds x {FLAGS.steps} steps, medians")
  print(f"ours: compile {ours['compile_s']:.1f} s (not timed); {ours['flops'] / 1e9:.1f} GFLOP per step "
        f"(XLA cost analysis, all devices)")
  print(f"float32 matmul peak ({FLAGS.matmul_size}^2): {peak_wall / 1e9:.1f} GFLOP/s, "
        f"{peak_cpu / 1e9:.1f} GFLOP per CPU-s")
  if peers:
    print(f"peer: PyTorch {__import__('torch').__version__}, "
          f"{'torch.compile' if sides[peers[0]]['compiled'] else 'eager'}, channels_last; torch/N: N threads")
  rates = {}
  for (side, part), s in samples.items():
    wall, cpu = median_times(s)
    rates[side, part] = (batch_size / wall, batch_size / cpu)
    line = (f"{side:7s} {part:16s} {1000 * wall:8.0f} ms  {batch_size / wall:6.2f} img/s  "
            f"{1000 * cpu:8.0f} CPU-ms  {batch_size / cpu:6.2f} img/CPU-s")
    if part == "step":
      line += (f"  {ours['flops'] / wall / 1e9:6.1f} GFLOP/s = {ours['flops'] / wall / peak_wall:5.1%} of peak"
               f" ({ours['flops'] / cpu / peak_cpu:5.1%} per CPU-s)")
    print(line)
  for part in parts if peers else []:
    (jw, jc), best_wall, best_cpu = rates["jax", part], max(peers, key=lambda p: rates[p, part][0]), max(
        peers, key=lambda p: rates[p, part][1])
    print(f"ratio ours/peer {part:16s} {jw / rates[best_wall, part][0]:5.2f}x img/s (vs {best_wall}), "
          f"{jc / rates[best_cpu, part][1]:5.2f}x img/CPU-s (vs {best_cpu})")


if __name__ == "__main__":
  app.run(main)
