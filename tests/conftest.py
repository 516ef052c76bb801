"""Shared fixtures. Forces 2 XLA host devices so multi-device code is tested on CPU, and shares one
persistent XLA compilation cache between the tests and the subprocesses they start."""

import os
import signal
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    + ["--xla_force_host_platform_device_count=2"])
# Most tests compile the same few tiny programs (init, train step, sliding window); compiling them again costs
# seconds each on a 2-core machine, a cache hit milliseconds. A subprocess inherits these variables.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "unet-jax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The entry points' own limit (training/parallel.py), for the tests too: processes that share a cache folder
# must agree on whether it keeps access times.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

import pytest  # pylint: disable=g-import-not-at-top

from configs import unet2d  # pylint: disable=g-import-not-at-top  (the repository root: pythonpath in pyproject.toml)

VNC_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "vnc")


@pytest.fixture
def tiny_config():
  """The tiny synthetic config: trains in seconds."""
  return unet2d.get_config("tiny")


@pytest.fixture
def vnc_root():
  """Path of the real VNC data; skips the test when ../shared is absent."""
  if not os.path.isfile(os.path.join(VNC_ROOT, "training.tif")):
    pytest.skip("real EM data ../shared/data/vnc is absent (it is not part of the repository)")
  return VNC_ROOT


@pytest.fixture
def terminal_ctrl_c():
  """Python's Ctrl-C handler for the test and the processes it starts, as in a terminal: a job started in the
  background begins with SIGINT ignored."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)
