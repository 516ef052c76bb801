"""The U-Net as an ONNX model (converted by jax2onnx), for ONNX Runtime and bioimage.io packages.

`weight_graph` traces the network once per input shape with its variables as graph inputs: it needs
no values, so it can run while JAX traces the sliding window. `bake` then stores given variables in
that graph as initializers, which lets ONNX Runtime fold BatchNorm into the convolutions and prepack
their weights. Shapes are static (jax2onnx writes the linear resize with constant output sizes), so
there is one graph per (batch, *window, channels).

  model_proto = export_onnx(model, variables, (1, 1024, 1024, 1))   # image -> probabilities

The graph ends in the model's own output function (`UNet.probabilities`): the sigmoid of a binary model,
or per-class sigmoids / the softmax over K channels of a K-class one, so ONNX Runtime returns what the
XLA engine does.
"""

import contextlib
import functools
import importlib
import io
import logging
from types import ModuleType
from typing import Any

import jax
import numpy as np

from unet_jax.errors import InputError
from unet_jax.network.model import UNet

ONNX_NORMS, ONNX_DTYPES = ("batch", "none"), ("float32",)  # what the conversion handles
INSTALL = "pip install jax2onnx==0.12.5 onnx==1.23.2 onnxruntime==1.31.1"
INPUT_NAME, OUTPUT_NAME = "image", "probability"
OPSET = 18  # the lowest opset that jax2onnx 0.12.5 writes this model in (ReduceMax with axes as input)


def require(module: str, purpose: str) -> ModuleType:
  """Imports `module`, or raises a one-line InputError saying that `purpose` needs it and how to install it."""
  if module == "jax2onnx":  # it logs a traceback per optional example plugin (equinox, dm-pix) it skips
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise InputError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {INSTALL}") from e


def check_exportable(model: UNet, purpose: str) -> None:
  """Raises a one-line InputError for a model whose ONNX conversion would fail or differ from JAX."""
  if np.dtype(model.dtype).name not in ONNX_DTYPES:
    raise InputError(f"{purpose} needs model.dtype='float32' (ONNX Runtime's CPU convolutions have no "
                     f"{np.dtype(model.dtype).name}); use eval.engine='xla' for this model")
  if model.norm not in ONNX_NORMS:
    raise InputError(f"{purpose} does not support model.norm='group' (jax2onnx 0.12.5 converts GroupNorm "
                     "wrongly); use eval.engine='xla' for this model")


def variable_names(variables: Any) -> list[str]:
  """ONNX input names of `variables`' leaves, in `jax.tree.leaves` order ('params.enc0.conv0.kernel', ...)."""
  paths = jax.tree_util.tree_flatten_with_path(variables)[0]
  return [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in paths]


def weight_graph(model: UNet, input_shape: tuple[int, ...], variables: Any) -> bytes:
  """Serialized ONNX graph (image f32[*input_shape], *variables) -> probabilities f32[*input_shape[:-1], K].

  Only the structure, shapes and dtypes of `variables` (arrays or tracers) matter; cached on them.
  """
  leaves, treedef = jax.tree.flatten(variables)
  return _weight_graph(model, tuple(input_shape), treedef, tuple((np.shape(l), np.dtype(l.dtype)) for l in leaves))


@functools.lru_cache(maxsize=8)
def _weight_graph(model: UNet, input_shape: tuple[int, ...], treedef: Any,
                  leaf_shapes: tuple[tuple[tuple[int, ...], np.dtype], ...]) -> bytes:
  to_onnx = require("jax2onnx", "ONNX export").to_onnx
  leaves = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaf_shapes]
  def probabilities(image: jax.Array, *variables: jax.Array) -> jax.Array:
    return model.probabilities(model.apply(jax.tree.unflatten(treedef, variables), image, train=False))
  with contextlib.redirect_stdout(io.StringIO()):  # jax2onnx 0.12.5 prints debug lines for each flax Conv
    proto = to_onnx(probabilities, [jax.ShapeDtypeStruct(input_shape, np.float32), *leaves], model_name="unet",
                    opset=OPSET, input_names=[INPUT_NAME, *variable_names(jax.tree.unflatten(treedef, leaves))],
                    output_names=[OUTPUT_NAME])
  del proto.graph.value_info[:]  # jax2onnx stamps some NCHW tensors with NHWC shapes; ONNX Runtime infers them
  return proto.SerializeToString()


def bake(graph: bytes, variables: Any) -> Any:
  """The onnx.ModelProto of `graph` (from `weight_graph`) with `variables` stored in it: one input, the image."""
  onnx = require("onnx", "ONNX export")
  proto = onnx.load_from_string(graph)
  values = dict(zip(variable_names(variables), jax.tree.leaves(variables)))
  kept = [i for i in proto.graph.input if i.name not in values]
  if len(kept) != 1 or len(proto.graph.input) - 1 != len(values):
    raise InputError(f"the ONNX graph's inputs {[i.name for i in proto.graph.input]} do not match the variables; "
                     "export the graph from the same model")
  del proto.graph.input[:]
  proto.graph.input.extend(kept)
  proto.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v, np.float32), name)
                                 for name, v in values.items())
  return proto


def export_onnx(model: UNet, variables: Any, input_shape: tuple[int, ...]) -> Any:
  """A self-contained onnx.ModelProto: image f32[*input_shape] (B, *spatial, C) -> probabilities f32[B, *spatial, K]."""
  check_exportable(model, "ONNX export")
  model.check_input(input_shape)
  proto = bake(weight_graph(model, input_shape, variables), variables)
  require("onnx", "ONNX export").checker.check_model(proto)
  return proto
