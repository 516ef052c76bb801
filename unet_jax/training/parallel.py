"""Data parallelism: a 1-D device mesh over the 'batch' axis and host-device setup for CPUs."""

import os
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def add_xla_flags(*flags: str, override: bool = True) -> None:
  """Adds `flags` ('--name=value') to XLA_FLAGS; call before JAX initialises its backends.

  A flag already there is replaced (override=True) or left as the user set it (override=False).
  """
  name = lambda flag: flag.split("=")[0]
  current = os.environ.get("XLA_FLAGS", "").split()
  if override:
    current = [f for f in current if name(f) not in {name(g) for g in flags}]
  else:
    flags = tuple(f for f in flags if name(f) not in {name(c) for c in current})
  os.environ["XLA_FLAGS"] = " ".join([*current, *flags])


def use_host_devices(count: int) -> None:
  """Asks XLA for `count` CPU devices (0: one per core); call before JAX initialises its backends.

  Also turns XLA's concurrency-optimised CPU scheduler off (a value the user set in XLA_FLAGS wins):
  the 2 host devices already keep both cores busy, and running more ops at once only added
  contention. Measured with benchmarks/xla_layouts.py on this project's 2-core CPU (train step,
  median of per-round ratios of interleaved rounds; three runs of 5, 9 and 12 rounds): 0.95x, 0.90x
  and 0.94x the step time. Forward-only sliding windows: 0.97x (neutral).
  """
  add_xla_flags(f"--xla_force_host_platform_device_count={count or os.cpu_count() or 1}")
  add_xla_flags("--xla_cpu_enable_concurrency_optimized_scheduler=false", override=False)


def use_inference_kernels() -> None:
  """For forward-only (inference) processes on CPU: XLA's own convolutions instead of YNNPACK's.

  Measured with benchmarks/inference_throughput.py on this project's 2-core CPU: 2.65 instead of
  3.21 s per 1024^2 slice of 256^2 windows. Training keeps YNNPACK, whose backward passes are faster
  (benchmarks/train_throughput.py: 5.15 vs 4.49 img/s). A value the user set in XLA_FLAGS wins.
  """
  add_xla_flags("--xla_cpu_experimental_ynn_fusion_type=", override=False)


CACHE_BYTES = 2 << 30  # the compilation cache's default size limit


def use_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk, so the next run of the same model (evaluate after train, a resumed
  run, another window size seen before) skips compiling, which takes most of a short run on a CPU: the tiny
  config's train.py took 108.9 s with an empty cache and 24.3 s with a filled one on this project's 2-core
  machine (under load; 4.5x). `JAX_COMPILATION_CACHE_DIR` chooses the folder, empty for none; the default is
  ~/.cache/unet-jax/xla, kept under 2 GiB by dropping the least recently used programs
  (`JAX_COMPILATION_CACHE_MAX_SIZE` in bytes sets another limit, -1 none).
  """
  folder = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if folder is None:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(home, "unet-jax", "xla")
  if folder:
    # A cache that cannot be read or written (a read-only home, a full disk) only costs compile time: no warnings.
    warnings.filterwarnings("ignore", message="Error (reading|writing) persistent compilation cache")
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:  # every process sharing a folder must use the same
      jax.config.update("jax_compilation_cache_max_size", CACHE_BYTES)  # mode: with a limit, access times are kept


def make_mesh(devices: list | None = None) -> Mesh:
  """A mesh of `devices` (default: every device of every process) along the 'batch' axis."""
  return Mesh(np.array(devices if devices is not None else jax.devices()), (AXIS,))


def shard_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Places this process's part of a global batch, split along axis 0 over the mesh."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(mesh: Mesh, tree):
  """Places a pytree fully replicated on every device of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def local_replica(tree):
  """This process's copy of a pytree replicated over a mesh (of one or several processes), on one device.

  Use it for per-process work such as validation: jit on the replicated arrays themselves would
  run the same computation on every device of the mesh.
  """
  return jax.tree.map(lambda a: a.addressable_data(0), tree)
