"""Multi-process training: two processes on loopback, one CPU device each, form one JAX system.

The test starts this file twice as a worker (`python tests/test_distributed.py ...`); each worker joins
through `unet_jax.training.distributed`, trains 2 steps of the tiny config on its part of the global batch
over the global mesh, and saves its parameters. Both must hold the same parameters, equal to those
of one process training on the whole global batch. Then both run `trainer.train_and_evaluate` in one
shared workdir (validation, checkpoint and log with two processes) and must report the same scores.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import unet2d
from unet_jax.training import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _config(coordinator: str = "", process_id: int = 0):
  """The tiny config, as every worker and the single-process reference use it."""
  config = unet2d.get_config("tiny")
  config.distributed.coordinator = coordinator
  config.distributed.num_processes = 2 if coordinator else 1
  config.distributed.process_id = process_id
  return config


def _train(config) -> dict[str, np.ndarray]:
  """STEPS train steps over all devices of all processes; this process's copy of the parameters."""
  import jax
  from unet_jax.io import data
  from unet_jax.network.model import build_model
  from unet_jax.training import sampling, trainer
  mesh = parallel.make_mesh()
  splits = data.load_splits(config.data)
  sampler = sampling.PatchSampler.create(splits["train"], trainer.patch_shape(config), config.train.fg_fraction)
  batches = sampling.batches(sampler, config.train.batch_size, config.seed, 0,
                             jax.process_index(), jax.process_count())
  state = trainer.create_train_state(config, build_model(config.model, parallel.AXIS), jax.random.PRNGKey(0))
  state, step = parallel.replicate(mesh, state), trainer.make_parallel_train_step(mesh, config)
  for i in range(STEPS):
    state, _ = step(state, parallel.shard_batch(mesh, next(batches)), jax.random.PRNGKey(i))
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  return {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)) for path, leaf in leaves}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  import jax
  coordinator = f"127.0.0.1:{_free_port()}"
  path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)  # configs, unet_jax for the workers
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
  workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), coordinator, str(p),
                               str(tmp_path / f"params{p}.npz"), str(tmp_path / "run")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in range(2)]
  try:
    logs = [w.communicate(timeout=600)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, log in zip(workers, logs):
    assert w.returncode == 0, log[-3000:]
  params = [dict(np.load(tmp_path / f"params{p}.npz")) for p in range(2)]
  scores = [p.pop("scores") for p in params]
  np.testing.assert_array_equal(scores[0], scores[1])
  assert scores[0][0] == STEPS  # the run's step, then its validation Dice
  with open(tmp_path / "run" / "log.jsonl") as f:
    assert sum('"event": "start"' in line for line in f) == 1  # only process 0 logs
  assert params[0].keys() == params[1].keys() and len(params[0]) > 4
  for name in params[0]:
    np.testing.assert_array_equal(params[0][name], params[1][name], err_msg=name)

  assert jax.device_count() == 2, "conftest forces 2 host devices"
  reference = _train(_config())  # one process, 2 devices, the whole global batch
  assert reference.keys() == params[0].keys()
  for name in reference:
    np.testing.assert_allclose(params[0][name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_bad_distributed_config():
  from unet_jax.errors import InputError
  from unet_jax.training import distributed
  with pytest.raises(InputError, match="host:port"):
    distributed.initialize(_config(coordinator="localhost"))
  config = _config(coordinator="127.0.0.1:1234", process_id=2)
  with pytest.raises(InputError, match="process_id must be in"):
    distributed.initialize(config)


if __name__ == "__main__":  # worker: coordinator process_id output.npz workdir
  parallel.use_host_devices(1)
  worker_config = _config(sys.argv[1], int(sys.argv[2]))
  from unet_jax.training import distributed, trainer
  distributed.initialize(worker_config)
  worker_params = _train(worker_config)
  worker_config.train.steps = STEPS
  result = trainer.train_and_evaluate(worker_config, sys.argv[4])
  np.savez(sys.argv[3], scores=np.array([result["step"], result["dice"]]), **worker_params)
