"""Sliding-window inference with the forward pass in XLA vs ONNX Runtime (`eval.engine`), same windows.

  python benchmarks/inference_engines.py [--workdir=runs/vnc] [--slices=8]

On ../shared/data/vnc/unlabeled.tif (1024 x 1024 slices; skipped with a message when absent): seconds
per slice of `windows.sliding_window_predict` for each --windows setting (window:overlap; default
256 px at 0.5, 512 at 0.5, and the whole slice in one window), Gaussian blending, batches of
--batch windows, the configs/unet2d.py:vnc U-Net (--workdir's checkpoint, or seeded random
weights). For each setting both engines run the same slices, alternating which goes first, after a
warm-up slice (compilation, ONNX conversion and session); medians per engine, the ratio of the
medians, and the max |ONNX - XLA| probability. XLA uses its own CPU convolutions, as evaluate.py
does (`parallel.use_inference_kernels`); --ynnpack keeps XLA's default YNNPACK ones. When torch and
monai are installed (benchmarks/requirements.txt), MONAI's `sliding_window_inference` with the same
weights in the PyTorch twin (2 threads, channels_last, sigma 0.125) alternates with them as a third
column. The load average is printed before and after: on a shared machine only the ratios of one
run compare. --json adds one JSON line per setting (median s per slice by engine), which
benchmarks/end_to_end.py reads.
"""

import importlib.util
import json
import os
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

import common

FLAGS = common.define_inference_flags(slices=8)
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_string("windows", "256:0.5,512:0.5,0:0", "window:overlap settings, comma-separated; window 0 = the "
                    "whole slice.")
flags.DEFINE_bool("json", False, "Also one JSON line of median seconds per setting.")


def monai_runner(model: Any, variables: Any, window: tuple[int, int], overlap: float,
                 batch: int) -> Callable[[np.ndarray], np.ndarray]:
  """image f32[H, W] -> probabilities by MONAI's sliding window over the PyTorch twin (channels_last)."""
  import torch  # pylint: disable=g-import-not-at-top
  from monai.inferers import sliding_window_inference  # pylint: disable=g-import-not-at-top
  from torch_unet import copy_flax_variables, twin  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  net = copy_flax_variables(twin(model), variables)
  net = net.eval().to(memory_format=torch.channels_last)
  def run(image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image)[None, None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
      out = sliding_window_inference(x, window, batch, lambda p: torch.sigmoid(net(p.contiguous(
          memory_format=torch.channels_last))), overlap=overlap, mode="gaussian", sigma_scale=0.125)
    return out[0, 0].numpy()
  return run


def main(argv: list[str]) -> None:
  del argv
  if not FLAGS.ynnpack:
    from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
    parallel.use_inference_kernels()  # before JAX starts its backends
  if not os.path.isfile(FLAGS.data):
    print(f"skipped: {FLAGS.data} is absent (the VNC data lives in ../shared/data/vnc, outside the repository)")
    return
  import jax  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from unet_jax.inference import engines, windows
  from unet_jax.io import checkpoint, stacks  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import abstract_variables, build_model  # pylint: disable=g-import-not-at-top

  config = common.load_config("configs/unet2d.py:vnc")
  model = build_model(config.model)
  if FLAGS.workdir:
    variables, step = checkpoint.restore_variables(FLAGS.workdir, abstract_variables(model), config.eval.checkpoint)
  else:
    variables, step = common.random_variables(model), None
  with stacks.StackReader(FLAGS.data) as reader:
    slices = np.stack([reader[z] for z in range(min(FLAGS.slices + 1, len(reader)))])
  height, width = slices.shape[1:]
  print(f"data {FLAGS.data}: {len(slices)} slices of {height} x {width}; U-Net depth {model.depth}, "
        f"{model.base_features} features; weights: {FLAGS.workdir or 'random'}{'' if step is None else f' (step {step})'}")
  peer = all(importlib.util.find_spec(name) for name in ("torch", "monai"))
  print(f"jax {jax.__version__} ({'YNNPACK' if FLAGS.ynnpack else 'XLA'} convolutions), onnxruntime "
        f"{onnxruntime.__version__}, {'MONAI + PyTorch peer' if peer else 'no torch/monai: no MONAI peer'}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")

  for setting in FLAGS.windows.split(","):
    size, overlap = setting.split(":")
    window = (int(size) or height, int(size) or width)
    overlap = float(overlap)
    count = len(windows.window_grid((height, width), window, overlap))
    batch = min(FLAGS.batch, count)
    run = {engine: (lambda image, p=windows.predictor(model, "none", engine):
                    np.asarray(windows.sliding_window_predict(p, variables, image, window, overlap, "gaussian", batch)))
           for engine in engines.ENGINES}
    if peer:
      run["monai"] = monai_runner(model, variables, window, overlap, batch)
    warm = {}
    for engine, predict in run.items():
      start = time.perf_counter()
      warm[engine] = predict(slices[0])
      print(f"  warm-up {engine}: {time.perf_counter() - start:.1f} s", end="")
    seconds = {engine: [] for engine in run}
    for i, image in enumerate(slices[1:]):
      for engine in (list(run) if i % 2 == 0 else list(run)[::-1]):
        start = time.perf_counter()
        run[engine](image)
        seconds[engine].append(time.perf_counter() - start)
    median = {engine: float(np.median(s)) for engine, s in seconds.items()}
    per_slice = np.median(np.array(seconds["xla"]) / np.array(seconds["onnx"]))
    print(f"\nwindow {window[0]}x{window[1]}, overlap {overlap:g}: {count} windows, batches of {batch}; "
          f"{len(slices) - 1} slices per engine, alternating")
    print(f"  s per slice (median): XLA {median['xla']:.3f}, ONNX Runtime {median['onnx']:.3f} -> ONNX Runtime "
          f"{median['xla'] / median['onnx']:.2f}x faster (median of per-slice ratios {per_slice:.2f}x); "
          f"max |ONNX - XLA| probability {np.abs(warm['onnx'] - warm['xla']).max():.1e}")
    if peer:
      print(f"  MONAI + PyTorch {median['monai']:.3f} s per slice: XLA {median['monai'] / median['xla']:.2f}x, "
            f"ONNX Runtime {median['monai'] / median['onnx']:.2f}x its speed")
    if FLAGS.json:
      print(json.dumps({"window": list(window), "overlap": overlap, "windows": count, "batch": batch,
                        "slices": len(slices) - 1, **median}))
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
