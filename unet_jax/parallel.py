"""Data parallelism: a 1-D device mesh over the 'batch' axis and host-device setup for CPUs."""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def use_host_devices(count: int) -> None:
  """Asks XLA for `count` CPU devices (0: one per core); call before JAX initialises its backends."""
  count = count or os.cpu_count() or 1
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


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
