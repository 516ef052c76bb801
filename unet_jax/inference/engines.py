"""The network's forward pass for inference, run by XLA or by ONNX Runtime (`eval.engine`: xla | onnx).

With 'onnx', each batch of windows leaves the jitted sliding window through `jax.pure_callback` and
runs in an ONNX Runtime session of the model converted by jax2onnx (`onnx_export`); windows,
padding, test-time augmentation and blending stay the same JAX code, so only the forward pass
changes. The graph is converted while JAX traces (it needs shapes only); the session, which holds
the variables as constants, is built on the first batch and reused while graph and variables are
equal (compared exactly, a few ms per batch), so new weights need no recompilation and still give
the right answer.
Which engine is faster on a machine: benchmarks/inference_engines.py.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference import onnx_export
from unet_jax.network.model import UNet

ENGINES = ("xla", "onnx")
MAX_SESSIONS = 4  # ONNX Runtime sessions kept (one per window batch shape and set of variables)

Forward = Callable[[Any, jax.Array], jax.Array]  # (variables, f32[B, *spatial, C]) -> probabilities f32[B, *spatial, K]

_sessions: list[tuple[bytes, list[np.ndarray], Any]] = []  # (graph, variables' leaves, session), most recent last


def forward(model: UNet, engine: str = "xla") -> Forward:
  """(variables, images f32[B, *spatial, C]) -> probabilities f32[B, *spatial, K], run by `engine`: the sigmoid
  (K = 1), or the model's per-class sigmoids / softmax for K = model.num_classes classes.

  Spatial sizes must fit the model (`UNet.check_input`). Raises InputError for an unknown engine, or
  for 'onnx' when onnxruntime or jax2onnx is not installed or the model cannot be converted
  (`onnx_export.check_exportable`: bfloat16, GroupNorm).
  """
  if engine not in ENGINES:
    raise InputError(f"eval.engine must be one of {ENGINES}, got {engine!r}")
  if engine == "xla":
    return lambda variables, images: model.probabilities(model.apply(variables, images, train=False))
  for module in ("onnxruntime", "onnx", "jax2onnx"):
    onnx_export.require(module, "eval.engine='onnx'")
  onnx_export.check_exportable(model, "eval.engine='onnx'")
  return functools.partial(_onnx_forward, model)


def _onnx_forward(model: UNet, variables: Any, images: jax.Array) -> jax.Array:
  """`forward` through ONNX Runtime: converts the graph for images.shape now, runs it from XLA."""
  graph = onnx_export.weight_graph(model, images.shape, variables)
  result = jax.ShapeDtypeStruct((*images.shape[:-1], model.num_classes), jnp.float32)
  return jax.pure_callback(functools.partial(_run_session, graph), result, variables, images,
                           vmap_method="sequential")


def _run_session(graph: bytes, variables: Any, images: np.ndarray) -> np.ndarray:
  """Runs `graph` with `variables` (host arrays) on `images` in a cached ONNX Runtime session."""
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(variables)]
  for i, (cached_graph, cached_leaves, session) in enumerate(_sessions):
    if cached_graph == graph and all(np.array_equal(a, b) for a, b in zip(cached_leaves, leaves)):
      _sessions.append(_sessions.pop(i))
      break
  else:
    ort = onnx_export.require("onnxruntime", "eval.engine='onnx'")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # Idle threads sleep instead of spinning: XLA's blending runs between batches on the same cores
    # (benchmarks/inference_engines.py, 256^2 windows on 2 loaded cores: 4.3 instead of 5.6 s per slice).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_export.bake(graph, variables).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    _sessions.append((graph, [leaf.copy() for leaf in leaves], session))
    del _sessions[:-MAX_SESSIONS]
  return session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: np.asarray(images, np.float32)})[0]
