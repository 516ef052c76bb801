"""Chunked OME-Zarr segmentation on Dask: Mvoxel/s with 1 and 2 worker processes, and peak RSS per worker, for
volumes 1x to 16x the chunk.

  python benchmarks/chunked_segmentation.py [--chunk=8,512,512] [--multiples=1,4,16] [--workers=1,2] \
      [--window=128] [--features=4] [--depth=2]

Each volume is written as a synthetic OME-Zarr (uint8, slab by slab), then segmented by
`chunked.segment_volume` in its own subprocess, on a fresh LocalCluster of N single-threaded worker
processes set up as `--scheduler=local` sets them up (`cluster.worker_environment`: one core each).
The seconds are those of `segment_volume` (the workers' start-up and imports before it excluded, their
compilation included); the peak resident memory (VmHWM) is read from each worker at the end, and from
the client process. So is the CPU time the workers used while it ran: on a machine shared with other
jobs, a job's worker processes get the CPU the kernel's scheduler leaves them (Linux's autogroup shares it
between sessions, not processes), and CPU / (seconds x workers) says how much that was; Mvoxel per worker
CPU second is the cost of the work itself. Memory per worker should stay flat in the volume size: a worker holds
one block (and its halo) at a time. The network is a 2D U-Net with random weights (its size set by the
flags): the figures measure the pipeline (reading, windows, writing, instance passes, task scheduling)
around a network of that cost.
"""

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

flags.DEFINE_list("chunk", ["8", "512", "512"], "Chunk (z, y, x) voxels: the block segmented at a time.")
flags.DEFINE_integer("window", 128, "Sliding window (square), pixels.")
flags.DEFINE_integer("features", 4, "Base features of the random 2D U-Net.")
flags.DEFINE_integer("depth", 2, "Depth of the random 2D U-Net.")
flags.DEFINE_list("multiples", ["1", "4", "16"], "Volume sizes in chunks (1, 2, 4, 8 or 16).")
flags.DEFINE_list("workers", ["1", "2"], "Worker process counts to compare.")
flags.DEFINE_string("one", None, "Internal: the volume a child process segments (with the first of --workers).")
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


def _peak_rss_mb() -> float:
  """This process's peak resident memory, VmHWM (not getrusage's ru_maxrss, which a spawned worker inherits from
  the process that forked it)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _warm() -> None:
  """Imports what a worker's first task would (JAX, the library), outside the timed part."""
  importlib.import_module("unet_jax.inference.chunked")


def run_one(chunk: tuple[int, int, int], workers: int) -> None:
  """In a fresh process: segment one volume (--one) on `workers` worker processes, print the figures as JSON."""
  # pylint: disable=g-import-not-at-top
  import distributed
  import jax
  import jax.numpy as jnp
  import ml_collections
  from unet_jax.inference import chunked, cluster
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import ngff
  from unet_jax.network.model import UNet
  model = UNet(ndim=2, depth=FLAGS.depth, base_features=FLAGS.features, norm="batch", upsample="resize")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), train=False)
  config = ml_collections.ConfigDict({"window": FLAGS.window, "overlap": 0.5, "blend": "gaussian", "sigma": 0.125,
                                      "batch_size": 4, "threshold": 0.5, "tta": "none", "engine": "xla"})
  predictor = Predictor.create(model, variables, config)
  with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, env=cluster.worker_environment(1),
                                silence_logs=logging.ERROR) as local, distributed.Client(local) as client, \
       ngff.ZarrStack(FLAGS.one) as stack:
    client.run(_warm)
    cpu = client.run(time.process_time)
    start = time.perf_counter()
    summary = chunked.segment_volume(predictor, stack, FLAGS.one + f".out{workers}", chunk, progress=False,
                                     scheduler=local.scheduler_address)
    seconds = time.perf_counter() - start
    cpu = sum(t - cpu[w] for w, t in client.run(time.process_time).items())
    worker_rss = sorted(client.run(_peak_rss_mb).values())
  print(json.dumps({"voxels": int(np.prod(stack.shape)), "seconds": seconds, "chunks": summary["chunks"],
                    "instances": summary["instances"], "worker_cpu_seconds": cpu, "worker_peak_rss_mb": worker_rss,
                    "client_peak_rss_mb": _peak_rss_mb()}))


def main(argv: list[str]) -> None:
  del argv
  chunk = tuple(int(v) for v in FLAGS.chunk)
  counts = [int(w) for w in FLAGS.workers]
  if FLAGS.one:
    return run_one(chunk, counts[0])
  cz, cy, cx = chunk
  shapes = {1: (cz, cy, cx), 2: (cz, cy, 2 * cx), 4: (cz, 2 * cy, 2 * cx), 8: (2 * cz, 2 * cy, 2 * cx),
            16: (4 * cz, 2 * cy, 2 * cx)}
  print(f"chunk {chunk} ({np.prod(chunk) / 1e6:.1f} Mvoxel), window {FLAGS.window}, 2D U-Net depth "
        f"{FLAGS.depth}, {FLAGS.features} base features, random weights; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}")
  print("| volume | x chunk | Mvoxel | chunks | workers | seconds | Mvoxel/s | speed-up (ideal = workers) | "
        "workers' CPU / (seconds x workers) | Mvoxel per worker CPU second | peak RSS per worker (MB) | "
        "client peak RSS (MB) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for multiple in (int(m) for m in FLAGS.multiples):
      shape = shapes[multiple]
      path = os.path.join(tmp, f"v{multiple}.ome.zarr")
      write_volume(path, shape, chunk)
      single = None
      for workers in counts:
        child = [f"--chunk={','.join(map(str, chunk))}", f"--window={FLAGS.window}", f"--features={FLAGS.features}",
                 f"--depth={FLAGS.depth}", f"--workers={workers}", f"--one={path}"]
        out = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rate = r["voxels"] / 1e6 / r["seconds"]
        single = single or (rate if workers == 1 else None)
        speedup = f"{rate / single:.2f}x" if single else "-"
        print(f"| {'x'.join(map(str, shape))} | {multiple} | {r['voxels'] / 1e6:.1f} | {r['chunks']} | {workers} | "
              f"{r['seconds']:.1f} | {rate:.2f} | {speedup} | {r['worker_cpu_seconds'] / r['seconds'] / workers:.0%} | "
              f"{r['voxels'] / 1e6 / r['worker_cpu_seconds']:.2f} | "
              f"{', '.join(f'{m:.0f}' for m in r['worker_peak_rss_mb'])} | {r['client_peak_rss_mb']:.0f} |", flush=True)
  print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
