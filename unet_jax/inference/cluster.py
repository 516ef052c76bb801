"""Where the tasks of chunked segmentation run: Dask's synchronous scheduler in this process, a LocalCluster
of worker processes on this machine, or an existing Dask cluster (SLURM, Kubernetes, ...) by its address.

  with connect("local") as runner:            # or "synchronous", or "tcp://host:8786"
    runner.share("predictor-1", predictor)    # once per worker (a worker plugin), not once per task
    records = runner.map(segment_block, blocks, job, desc="segment")

`map` builds one Dask task per item (`dask.delayed`), the same graph whatever the scheduler, and returns
their results in the items' order while a progress bar counts them. The synchronous scheduler runs
them one after another here (small jobs, tests, debugging); a cluster spreads them over its workers and
reruns elsewhere the tasks of a worker that dies. Tasks reach shared objects with `shared(name)`.

A LocalCluster has one worker process per core (or `workers`), each with one thread, and each of those
processes is told to use one core: NPROC (read by XLA's CPU client for its thread pools) and the
OpenMP/BLAS thread counts are set to 1 in its environment. Measured on this project's 2-core CPU: a
process with NPROC=1 keeps one thread busy in a convolution, two without it. Workers of an existing
cluster are set up by whoever starts them (docs/usage/segmenting.md: SLURM, Kubernetes, one GPU each).
"""

import contextlib
import logging
import os
import uuid
from typing import Any, Callable, Iterator, Sequence

import dask
import dask.callbacks
import distributed
import tqdm

from unet_jax.errors import InputError

SYNCHRONOUS, LOCAL = "synchronous", "local"
_SHARED: dict[str, Any] = {}  # this process's shared objects: the caller's, or a worker's copies


def shared(name: str) -> Any:
  """The object `Runner.share` made available as `name` to tasks in this process."""
  return _SHARED[name]


def worker_environment(threads: int = 1) -> dict[str, str]:
  """Environment variables that keep a worker process on `threads` cores (XLA's CPU thread pools, OpenMP, BLAS)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]  # one device per worker
  return {"NPROC": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
          "OPENBLAS_NUM_THREADS": str(threads), "XLA_FLAGS": " ".join(flags)}


class _Share(distributed.WorkerPlugin):
  """A worker plugin that puts one object in each worker's `_SHARED` (workers that join later get it too)."""

  def __init__(self, name: str, value: Any):
    self.name, self.value = name, value

  def setup(self, worker: Any) -> None:
    del worker
    _SHARED[self.name] = self.value

  def teardown(self, worker: Any) -> None:
    del worker
    _SHARED.pop(self.name, None)


class _Counted(dask.callbacks.Callback):
  """Calls `done()` after each task of the synchronous scheduler whose key starts with `prefix`."""

  def __init__(self, prefix: str, done: Callable[[], None]):
    super().__init__()
    self._prefix, self._done = prefix, done

  def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
    del result, dsk, state, worker_id
    if str(key[0] if isinstance(key, tuple) else key).startswith(self._prefix):
      self._done()


class Runner:
  """Runs lists of tasks on one scheduler (`connect`)."""

  def __init__(self, client: Any | None, progress: bool, description: str):
    self.client, self.progress, self.description = client, progress, description
    self._plugins: list[str] = []

  def share(self, name: str, value: Any) -> None:
    """Makes `value` reachable by tasks as `shared(name)`: here, or sent once to every worker (a worker plugin)."""
    if self.client is None:
      _SHARED[name] = value
      self._plugins.append(name)
      return
    self.client.register_plugin(_Share(name, value), name=name)
    self._plugins.append(name)

  def close(self) -> None:
    for name in self._plugins:
      _SHARED.pop(name, None)
      if self.client is not None:
        with contextlib.suppress(Exception):
          self.client.unregister_worker_plugin(name)
    self._plugins.clear()

  def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, desc: str, unit: str = "chunk") -> list[Any]:
    """[fn(item, *args) for item in items], each a Dask task, with a progress bar; results in the items' order."""
    if not items:
      return []
    prefix = f"{desc}-{uuid.uuid4().hex[:8]}"
    tasks = [dask.delayed(fn, pure=False)(item, *args, dask_key_name=f"{prefix}-{i}") for i, item in enumerate(items)]
    with tqdm.tqdm(total=len(items), unit=unit, desc=desc, disable=not self.progress) as bar:
      if self.client is None:
        with _Counted(prefix, bar.update):
          return list(dask.compute(*tasks, scheduler=SYNCHRONOUS))
      futures = self.client.compute(tasks)
      order = {f.key: i for i, f in enumerate(futures)}
      results: list[Any] = [None] * len(items)
      try:
        for future, result in distributed.as_completed(futures, with_results=True):
          results[order[future.key]] = result
          bar.update()
      finally:
        self.client.cancel([f for f in futures if not f.done()])
      return results


def check_scheduler(scheduler: str) -> None:
  """InputError unless `scheduler` is 'synchronous', 'local' or an address (tcp://host:8786)."""
  if scheduler not in (SYNCHRONOUS, LOCAL) and "://" not in scheduler:
    raise InputError(f"--scheduler={scheduler!r}: give 'synchronous', 'local' or a Dask scheduler's address such as "
                     "tcp://host:8786")


@contextlib.contextmanager
def connect(scheduler: str = SYNCHRONOUS, workers: int = 0, progress: bool = True) -> Iterator[Runner]:
  """A `Runner` on `scheduler`: "synchronous" (this process), "local" (a LocalCluster of `workers` processes,
  0: one per core) or the address of a running Dask scheduler ("tcp://host:8786")."""
  if scheduler == SYNCHRONOUS:
    runner = Runner(None, progress, "Dask's synchronous scheduler (this process)")
    try:
      yield runner
    finally:
      runner.close()
    return
  with contextlib.ExitStack() as stack:
    if scheduler == LOCAL:
      n = workers or os.cpu_count() or 1
      cluster = stack.enter_context(distributed.LocalCluster(
          n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
          env=worker_environment(1), silence_logs=logging.ERROR))
      client = stack.enter_context(distributed.Client(cluster))
      description = f"a LocalCluster of {n} worker processes, 1 thread each"
    else:
      check_scheduler(scheduler)
      try:
        client = stack.enter_context(distributed.Client(scheduler, timeout="30s"))
      except (OSError, TimeoutError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(e).split())}); start it "
                         "(dask scheduler) or check the address") from None
      description = f"the Dask cluster at {scheduler}"
    runner = Runner(client, progress, description)
    if progress:
      print(f"Dask: {description}; dashboard {client.dashboard_link}", flush=True)
    try:
      yield runner
    finally:
      runner.close()
