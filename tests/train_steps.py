"""Data-parallel train steps the tests share: a fresh state, the states after each step, one vs two devices."""

from typing import Any, Iterator, Sequence

import jax
import numpy as np
import pytest

from unet_jax.io import data, synthetic
from unet_jax.network.model import build_model
from unet_jax.training import parallel, trainer


def batch_2d(n: int = 4, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch {'image', 'mask'} f32[n, size, size, 1] of synthetic slices."""
  image, mask = synthetic.make_stack(seed, n, (size, size))
  split = data.make_split(image, mask)
  return {"image": split.image[..., None], "mask": split.mask[..., None].astype(np.float32)}


def fresh_state(config: Any, mesh: jax.sharding.Mesh) -> Any:
  """The config's initial train state (seed 0), replicated over `mesh`."""
  model = build_model(config.model, parallel.AXIS)
  return parallel.replicate(mesh, trainer.create_train_state(config, model, jax.random.PRNGKey(0)))


def train_states(config: Any, batch: dict[str, np.ndarray], steps: int,
                 devices: Sequence[jax.Device] | None = None) -> Iterator[tuple[Any, dict[str, Any]]]:
  """(state, metrics) after each of `steps` train steps from a fresh state on `batch` (step i keyed by
  PRNGKey(i)), over `devices` (default all). Read a state before the next one: the step donates it."""
  mesh = parallel.make_mesh(devices)
  state, step = fresh_state(config, mesh), trainer.make_parallel_train_step(mesh, config)
  for i in range(steps):
    state, metrics = step(state, parallel.shard_batch(mesh, batch), jax.random.PRNGKey(i))
    yield state, metrics


def assert_one_and_two_devices_agree(config: Any, batch: dict[str, np.ndarray], steps: int) -> None:
  """`steps` train steps on one device and on two end with the same loss, parameters and batch statistics."""
  assert jax.device_count() == 2, "conftest forces 2 host devices"
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    *_, (state, metrics) = train_states(config, batch, steps, devices)
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats), float(metrics["loss"])))
  (p1, s1, l1), (p2, s2, l2) = results
  assert l1 == pytest.approx(l2, rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), (p1, s1), (p2, s2))
