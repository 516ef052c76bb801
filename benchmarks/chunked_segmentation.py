"""Chunked OME-Zarr segmentation: throughput (Mvoxel/s) and peak RSS for volumes 1x, 4x and 8x the chunk.

  python benchmarks/chunked_segmentation.py [--chunk=16,512,512] [--window=128] [--features=4] [--depth=2]

Each volume is written as a synthetic OME-Zarr (uint8, slab by slab), then segmented by
`chunked.segment_volume` in its own subprocess, whose peak resident memory (getrusage ru_maxrss) is
reported: flat in the volume size when only one chunk (and its halo) is held at a time. The network
is a 2D U-Net with random weights (its size set by the flags): the figures measure the pipeline
(reading, windows, writing, instance merging) around a network of that cost, compilation included.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

flags.DEFINE_list("chunk", ["16", "512", "512"], "Chunk (z, y, x) voxels: the block segmented at a time.")
flags.DEFINE_integer("window", 128, "Sliding window (square), pixels.")
flags.DEFINE_integer("features", 4, "Base features of the random 2D U-Net.")
flags.DEFINE_integer("depth", 2, "Depth of the random 2D U-Net.")
flags.DEFINE_list("multiples", ["1", "4", "8"], "Volume sizes in chunks (1, 2, 4, 8 or 16).")
flags.DEFINE_string("one", None, "Internal: the volume a child process segments.")
FLAGS = flags.FLAGS

VOXEL_NM = (50.0, 4.6, 4.6)


def write_volume(path: str, shape: tuple[int, int, int], chunk: tuple[int, int, int]) -> None:
  """A smooth random uint8 volume as OME-Zarr, written one chunk-deep slab at a time."""
  import zarr  # pylint: disable=g-import-not-at-top
  from unet_jax.io import ngff  # pylint: disable=g-import-not-at-top
  group = zarr.open_group(path, mode="w", zarr_format=ngff.FORMAT.zarr_format)
  array = ngff.create_image(group, shape, np.uint8, (min(chunk[0], 16), 256, 256), VOXEL_NM, ("z", "y", "x"))
  rng = np.random.default_rng(0)
  for z in range(0, shape[0], chunk[0]):
    slab = ndimage.gaussian_filter(rng.standard_normal((min(chunk[0], shape[0] - z), *shape[1:])), (0, 4, 4))
    array[z:z + len(slab)] = np.clip(128 + 1500 * slab, 0, 255).astype(np.uint8)


def run_one(chunk: tuple[int, int, int]) -> None:
  """In a fresh process: segment one volume (--one), print {voxels, seconds, peak_rss_mb} as JSON."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import ml_collections
  from unet_jax.inference import chunked
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import ngff
  from unet_jax.network.model import UNet
  model = UNet(ndim=2, depth=FLAGS.depth, base_features=FLAGS.features, norm="batch", upsample="resize")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), train=False)
  config = ml_collections.ConfigDict({"window": FLAGS.window, "overlap": 0.5, "blend": "gaussian", "sigma": 0.125,
                                      "batch_size": 4, "threshold": 0.5, "tta": "none", "engine": "xla"})
  predictor = Predictor.create(model, variables, config)
  with ngff.ZarrStack(FLAGS.one) as stack:
    start = time.perf_counter()
    summary = chunked.segment_volume(predictor, stack, FLAGS.one + ".out", chunk, progress=False)
    seconds = time.perf_counter() - start
  print(json.dumps({"voxels": int(np.prod(stack.shape)), "seconds": seconds, "chunks": summary["chunks"],
                    "instances": summary["instances"],
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str]) -> None:
  del argv
  chunk = tuple(int(v) for v in FLAGS.chunk)
  if FLAGS.one:
    return run_one(chunk)
  cz, cy, cx = chunk
  shapes = {1: (cz, cy, cx), 2: (cz, cy, 2 * cx), 4: (cz, 2 * cy, 2 * cx), 8: (2 * cz, 2 * cy, 2 * cx),
            16: (4 * cz, 2 * cy, 2 * cx)}
  print(f"chunk {chunk} ({np.prod(chunk) / 1e6:.1f} Mvoxel), window {FLAGS.window}, 2D U-Net depth "
        f"{FLAGS.depth}, {FLAGS.features} base features, random weights; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}")
  print("| volume | x chunk | Mvoxel | float32 volume (MB) | chunks | seconds | Mvoxel/s | peak RSS (MB) |")
  print("|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for multiple in (int(m) for m in FLAGS.multiples):
      shape = shapes[multiple]
      path = os.path.join(tmp, f"v{multiple}.ome.zarr")
      write_volume(path, shape, chunk)
      child = [f"--chunk={','.join(map(str, chunk))}", f"--window={FLAGS.window}", f"--features={FLAGS.features}",
               f"--depth={FLAGS.depth}", f"--one={path}"]
      out = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True, check=True)
      r = json.loads(out.stdout.strip().splitlines()[-1])
      print(f"| {'x'.join(map(str, shape))} | {multiple} | {r['voxels'] / 1e6:.1f} | {4 * r['voxels'] / 1e6:.0f} | "
            f"{r['chunks']} | {r['seconds']:.1f} | {r['voxels'] / 1e6 / r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |",
            flush=True)
  print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
