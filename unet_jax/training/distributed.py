"""Several processes (e.g. one per host) as one JAX system, from `config.distributed`.

Every process runs the same command with the same config except `process_id`. After `initialize`,
`jax.devices()` lists the devices of all processes, so `parallel.make_mesh()` spans every host and
the jitted shard_map train step runs over all of them; each process samples and places only its own
part of the global batch (`sampling.batches`, `parallel.shard_batch`).
"""

from typing import Any

import jax

from unet_jax.errors import InputError


def initialize(config: Any) -> None:
  """Joins the system described by `config.distributed`; does nothing when `coordinator` is "".

  coordinator: "host:port" of process 0 (every process passes the same), or "auto" to let JAX read
  the cluster's environment (SLURM, Open MPI, Kubernetes, Cloud TPU). Call before JAX's backends
  start (before the first use of `jax.devices()` or of an array).
  """
  d = config.distributed
  if not d.coordinator:
    return
  if d.coordinator == "auto":
    jax.distributed.initialize()
    return
  host, _, port = d.coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise InputError(f"distributed.coordinator must be 'host:port' (or 'auto'), got {d.coordinator!r}")
  if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
    raise InputError(f"distributed.process_id must be in [0, num_processes={d.num_processes}), "
                     f"got {d.process_id}")
  jax.distributed.initialize(coordinator_address=d.coordinator, num_processes=d.num_processes,
                             process_id=d.process_id)
