"""Sliding-window inference throughput: ours (JAX) vs MONAI (PyTorch), same U-Net, same windows.

  .venv/bin/pip install -r benchmarks/requirements.txt   # torch (CPU) and monai
  python benchmarks/inference_throughput.py [--slices=20] [--workdir=runs/vnc]

On ../shared/data/vnc/unlabeled.tif (20 x 1024 x 1024; skipped with a message when absent):
1. megapixels/s of `windows.sliding_window_predict` and of `monai.inferers.sliding_window_inference`
   with 256^2 windows, overlap 0.5, Gaussian blending, batches of 8, the default 2D U-Net of
   configs/unet2d.py:vnc with the same weights in both (random, or --workdir's checkpoint copied
   into benchmarks/torch_unet.py's `TorchUNet`); PyTorch runs in inference mode on 2 threads, in the
   faster of NCHW and channels_last. Slices alternate between the two so load changes hit both.
2. the whole 1024^2 slice through each network in one pass, against its windows;
3. peak RSS of streaming segmentation (`unet_jax.inference.segment`) of 20 vs 165 slices (a temp TIFF of
   repeated slices), each in a fresh subprocess, against reading the stack into memory first.
   Peak RSS is the child's VmHWM (/proc/self/status): getrusage's ru_maxrss would include the
   parent's RSS at fork. To keep these runs short they use a small U-Net and one window per slice
   (--rss_model, --rss_window): what they measure is whether memory grows with the stack.
Ours runs as evaluate.py does, with XLA's own CPU convolutions (`parallel.use_inference_kernels`);
--ynnpack keeps XLA's default YNNPACK ones. Numbers print to stdout; nothing is written outside a
temp directory.
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

import common

FLAGS = common.define_inference_flags(slices=20)
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_integer("window", 256, "Sliding window (square), pixels.")
flags.DEFINE_float("overlap", 0.5, "Sliding-window overlap.")
flags.DEFINE_integer("whole_slices", 3, "Slices timed in one whole-slice pass.")
flags.DEFINE_string("rss_slices", "20,165", "Stack lengths for the peak-RSS runs ('' = skip).")
flags.DEFINE_enum("rss_model", "small", ["small", "config"],
                  "Network for the RSS runs: a depth-2, 4-feature U-Net (fast) or the config's.")
flags.DEFINE_integer("rss_window", 1024, "Window of the RSS runs (overlap 0).")
flags.DEFINE_enum("child", None, ["stream", "memory"], "Internal: one RSS run in this process.")
flags.DEFINE_string("input", None, "Internal: the stack the RSS run segments.")


def config_and_variables(args: flags.FlagValues, small: bool = False):
  """configs/unet2d.py:vnc with the benchmark's window settings, its U-Net and weights.

  small: a depth-2, 4-feature U-Net with random weights instead (the fast RSS runs).
  """
  from unet_jax.io import checkpoint  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import abstract_variables, build_model, UNet  # pylint: disable=g-import-not-at-top
  config = common.load_config("configs/unet2d.py:vnc")
  config.eval.window, config.eval.overlap, config.eval.batch_size = args.window, args.overlap, args.batch
  config.eval.blend = "gaussian"
  if small:
    model = UNet(depth=2, base_features=4, norm="batch", upsample="resize")
    return config, model, common.random_variables(model)
  model = build_model(config.model)
  if args.workdir:
    variables, _ = checkpoint.restore_variables(args.workdir, abstract_variables(model), config.eval.checkpoint)
  else:
    variables = common.random_variables(model)
  return config, model, variables


def read_slices(path: str, count: int) -> np.ndarray:
  """The first `count` slices of `path`, f32[Z, H, W] in [0, 1]."""
  from unet_jax.io import stacks  # pylint: disable=g-import-not-at-top
  with stacks.StackReader(path) as reader:
    return np.stack([reader[z] for z in range(min(count, len(reader)))])


def throughput(args: flags.FlagValues) -> None:
  """Parts 1 and 2: ours vs MONAI, windows and whole slices."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from monai.inferers import sliding_window_inference  # pylint: disable=g-import-not-at-top
  from torch_unet import copy_flax_variables, twin  # pylint: disable=g-import-not-at-top
  from unet_jax.inference import windows  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(2)
  config, model, variables = config_and_variables(args)
  slices = read_slices(args.data, args.slices)
  z, h, w = slices.shape
  window = (args.window, args.window)
  print(f"data {args.data}: {z} x {h} x {w}; U-Net depth {model.depth}, {model.base_features} features, "
        f"{model.norm} norm, {model.upsample} upsampling; weights: {args.workdir or 'random'}")
  print(f"windows {window}, overlap {args.overlap}, gaussian, batch {args.batch}: "
        f"{len(windows.window_grid((h, w), window, args.overlap))} windows per slice; "
        f"jax {jax.__version__} on {len(jax.local_devices())} {jax.devices()[0].platform} device(s), torch {torch.__version__} (2 threads)")

  predict = windows.predictor(model)
  ours = lambda image: np.asarray(windows.sliding_window_predict(
      predict, variables, image, window, args.overlap, "gaussian", args.batch))
  net = copy_flax_variables(twin(model), variables).eval()

  def monai(image: np.ndarray, channels_last: bool, mode: str = "gaussian") -> np.ndarray:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(image)[None, None].contiguous(memory_format=layout)
    with torch.inference_mode():
      out = sliding_window_inference(x, window, args.batch, lambda p: torch.sigmoid(net(p.contiguous(memory_format=layout))),
                                     overlap=args.overlap, mode=mode, sigma_scale=0.125)
    return out[0, 0].numpy()

  def timed(f: Callable[..., np.ndarray], *a: Any) -> tuple[np.ndarray, float, float]:
    """(f(*a), wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = f(*a)
    return out, time.perf_counter() - wall, time.process_time() - cpu

  first, compile_s, _ = timed(ours, slices[0])
  layouts = {False: np.inf, True: np.inf}
  for channels_last in (False, True, False, True):  # twice each, alternating: the best of two
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    reference, seconds, _ = timed(monai, slices[0], channels_last)
    layouts[channels_last] = min(layouts[channels_last], seconds)
  channels_last = layouts[True] < layouts[False]
  net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
  print(f"warm-up slice: ours {compile_s:.1f} s (with compilation); MONAI best of two: NCHW {layouts[False]:.1f} s, "
        f"channels_last {layouts[True]:.1f} s -> using {'channels_last' if channels_last else 'NCHW'}")
  print(f"max |ours - MONAI| probability on slice 0: {np.abs(first - reference).max():.2e} "
        f"(the Gaussian maps differ: MONAI's is pixel-integrated and centred on w/2, ours sampled at (w-1)/2)")
  crop = slices[0, :2 * args.window, :2 * args.window]
  constant = windows.sliding_window_predict(predict, variables, crop, window, args.overlap, "constant", args.batch)
  print(f"max |ours - MONAI| with constant blending on a {crop.shape[0]}^2 crop: "
        f"{np.abs(np.asarray(constant) - monai(crop, channels_last, 'constant')).max():.2e}")

  runs = {"ours": [], "monai": []}  # (wall, cpu) per slice
  for i in range(z):
    runs["ours"].append(timed(ours, slices[i])[1:])
    runs["monai"].append(timed(monai, slices[i], channels_last)[1:])
  wall = {k: np.array([r[0] for r in v]) for k, v in runs.items()}
  cpu = {k: np.array([r[1] for r in v]) for k, v in runs.items()}
  mpx = h * w / 1e6
  print(f"\nsliding windows over {z} slices ({z * mpx:.1f} Mpx), alternating slice by slice:")
  for k, name in (("ours", "ours "), ("monai", "MONAI")):
    print(f"  {name} {z * mpx / wall[k].sum():.3f} Mpx/s ({wall[k].mean():.2f} s/slice), "
          f"{z * mpx / cpu[k].sum():.3f} Mpx per CPU second")
  print(f"  ratio ours/MONAI: {wall['monai'].sum() / wall['ours'].sum():.2f}x in wall time "
        f"(median of per-slice ratios {np.median(wall['monai'] / wall['ours']):.2f}x), "
        f"{cpu['monai'].sum() / cpu['ours'].sum():.2f}x in CPU time")

  n = min(args.whole_slices, z)
  whole = lambda image: np.asarray(windows.sliding_window_predict(predict, variables, image, (h, w), 0.0,
                                                                    "constant", 1))
  whole(slices[0])  # compile
  def torch_whole(image: np.ndarray) -> np.ndarray:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
      return torch.sigmoid(net(torch.from_numpy(image)[None, None].contiguous(memory_format=layout)))[0, 0].numpy()
  torch_whole(slices[0])
  seconds = {"windows": 0.0, "whole": 0.0, "torch": 0.0}
  for i in range(n):  # interleaved with windowed runs of the same slices
    seconds["windows"] += timed(ours, slices[i])[1]
    seconds["whole"] += timed(whole, slices[i])[1]
    seconds["torch"] += timed(torch_whole, slices[i])[1]
  print(f"\nwhole {h}x{w} slice in one pass ({n} slices, interleaved with windows): ours "
        f"{seconds['whole'] / n:.2f} s/slice ({n * mpx / seconds['whole']:.3f} Mpx/s), "
        f"{seconds['windows'] / seconds['whole']:.1f}x faster than its windows ({seconds['windows'] / n:.2f} s/slice); "
        f"PyTorch {seconds['torch'] / n:.2f} s/slice")
  print(f"  max |whole - windows| probability on slice 0: {np.abs(whole(slices[0]) - first).max():.2e}")


def child(args: flags.FlagValues) -> None:
  """One RSS run: segment args.input streaming (or in memory) and print the peak RSS in MiB."""
  from unet_jax.inference import segment  # pylint: disable=g-import-not-at-top
  from unet_jax.inference.predictor import Predictor  # pylint: disable=g-import-not-at-top
  from unet_jax.io import stacks  # pylint: disable=g-import-not-at-top
  config, model, variables = config_and_variables(args, small=args.rss_model == "small")
  predictor = Predictor.create(model, variables, config.eval)
  out = tempfile.mkdtemp(prefix="rss_")
  start = time.perf_counter()
  if args.child == "stream":
    with stacks.StackReader(args.input) as reader:
      segment.segment_stack(predictor, reader, out, progress=False)
  else:
    probs = predictor.probabilities(stacks.normalize_image(stacks.read_stack(args.input)))
    stacks.write_stack(os.path.join(out, "segmentation.tif"), predictor.segment(probs).astype(np.uint8) * 255)
  print(f"{peak_rss_mib():.0f} {time.perf_counter() - start:.1f}")


def peak_rss_mib() -> float:
  """This process's peak resident set size in MiB (VmHWM; ru_maxrss where /proc is missing)."""
  if os.path.isfile("/proc/self/status"):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(args: flags.FlagValues) -> None:
  """Part 3: peak RSS of streaming vs in-memory segmentation for each stack length."""
  import tifffile  # pylint: disable=g-import-not-at-top
  lengths = [int(n) for n in args.rss_slices.split(",") if n]
  with tempfile.TemporaryDirectory() as tmp:
    print(f"\npeak RSS (fresh subprocess each; {'depth-2, 4-feature' if args.rss_model == 'small' else 'config'} "
          f"U-Net, windows {args.rss_window}, overlap 0):")
    with tifffile.TiffFile(args.data) as source:
      pages = source.series[0].pages
      for n in lengths:
        path = os.path.join(tmp, f"stack{n}.tif")
        with tifffile.TiffWriter(path) as writer:  # slices repeated, written page by page
          for z in range(n):
            writer.write(pages[z % len(pages)].asarray(), compression="zlib", metadata=None)
        for mode in ("stream", "memory"):
          result = subprocess.run([sys.executable, __file__, f"--child={mode}", f"--input={path}",
                                   f"--window={args.rss_window}", "--overlap=0", f"--batch={args.batch}",
                                   f"--rss_model={args.rss_model}"]
                                  + ([f"--workdir={args.workdir}"] if args.workdir else []),
                                  capture_output=True, text=True, check=False)
          if result.returncode:
            sys.exit(result.stderr)
          rss, seconds = result.stdout.split()[-2:]
          print(f"  {n:4d} slices, {'streaming' if mode == 'stream' else 'in memory'}: "
                f"peak RSS {rss} MiB ({seconds} s)")


def main(argv: list[str]) -> None:
  del argv
  if not FLAGS.ynnpack:
    from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
    parallel.use_inference_kernels()  # before JAX starts its backends; child processes inherit it
  if FLAGS.child:
    child(FLAGS)
    return
  if not os.path.isfile(FLAGS.data):
    print(f"skipped: {FLAGS.data} is absent (the VNC data lives in ../shared/data/vnc, outside the repository)")
    return
  throughput(FLAGS)
  if FLAGS.rss_slices:
    peak_rss(FLAGS)


if __name__ == "__main__":
  app.run(main)
