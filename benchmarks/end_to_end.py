"""End-to-end training images per second, ours vs the MONAI-pipeline PyTorch peer, and sliding-window speed.

  .venv/bin/python benchmarks/end_to_end.py [--steps=12] [--warmup=3] [--rounds=1] [--workers=0,1,2] [--peer_threads=0]
      [--windows=256:0.5,0:0] [--infer_slices=3] [--config=configs/unet2d.py:vnc]
  pip install -r benchmarks/requirements.txt   # torch, monai (the peer), onnxruntime comes with requirements.txt

One sitting, one table (issue 17). Every measurement is its own subprocess, so threads never fight:
ours (this script with --side=ours: the jitted shard_map step that train.py runs, on
`config.host_devices` XLA host devices, with augmentation on the device, batches from our sampler
through its prefetch thread), and the peer (benchmarks/torch_pipeline.py: the PyTorch twin fed by a
MONAI augmentation pipeline in a DataLoader) with each --workers count (and --peer_threads count).
Per round they alternate (ours full, the peer full with every setting, ours none, the peer none
with every setting); each reports images per second over --steps steps after --warmup (ours compiles in the
first, untimed) and the share of that wall time blocked waiting for the next batch. Medians over
rounds; the peer's best setting per preset is its figure. Then benchmarks/inference_engines.py
(--json) times sliding-window segmentation of 1024² slices of ../shared/data/vnc/unlabeled.tif with
XLA, ONNX Runtime and MONAI + PyTorch at the same windows, overlap and Gaussian blending (random
weights; --infer_slices=0 skips it). The defaults take about 10 minutes on a quiet 2-core machine.
Every figure also prints as a JSON line.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

import common

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_enum("side", "all", ["all", "ours"], "all: run everything in subprocesses; ours: one measurement of ours.")
flags.DEFINE_enum("aug", "full", ["full", "flips", "none"], "With --side=ours: the augmentation preset.")
flags.DEFINE_integer("steps", 12, "Timed training steps per measurement.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (ours compiles in the first).")
flags.DEFINE_integer("rounds", 1, "Alternating rounds of all training measurements (medians are reported).")
flags.DEFINE_list("workers", ["0", "1", "2"], "DataLoader worker counts tried for the peer.")
flags.DEFINE_list("peer_threads", ["0"], "Intra-op thread counts tried for the peer's training process (0: one per "
                  "core); 0,1 also tries one thread, which suffers less when other jobs load the machine.")
flags.DEFINE_string("windows", "256:0.5,0:0", "Sliding-window settings window:overlap (0 = whole slice).")
flags.DEFINE_integer("infer_slices", 3, "Timed 1024² slices per window setting and engine (0: no inference).")
flags.DEFINE_string("infer_workdir", "", "Trained run whose weights the inference uses (default: random weights).")

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("full", "none")
LABELS = {"full": "full augmentation", "none": "no augmentation"}


def measure_ours(config: Any, aug: str, warmup: int, steps: int) -> dict[str, Any]:
  """Images per second and data-wait share of our training loop (train.py's step, sampler and prefetch)."""
  from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
  parallel.use_host_devices(config.host_devices)  # before JAX starts its backends
  import jax  # pylint: disable=g-import-not-at-top
  from unet_jax.io import data
  from unet_jax.network.model import build_model  # pylint: disable=g-import-not-at-top
  from unet_jax.training import augment, sampling, trainer  # pylint: disable=g-import-not-at-top
  augment.apply_preset(config, aug)
  mesh = parallel.make_mesh()
  split = data.load_splits(config.data)["train"]
  sampler = sampling.PatchSampler.create(split, trainer.patch_shape(config), config.train.fg_fraction,
                                         config.model.context_slices)
  init_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = parallel.replicate(mesh, trainer.create_train_state(
      config, build_model(config.model, parallel.AXIS), init_key))
  step_fn = trainer.make_parallel_train_step(mesh, config)
  batches = sampling.prefetch(sampling.batches(sampler, config.train.batch_size, config.seed, 0),
                              config.train.prefetch)
  loop = {"state": state, "step": 0}

  def step(batch: dict[str, Any]) -> None:
    key = jax.random.fold_in(aug_key, loop["step"])
    loop["state"], _ = step_fn(loop["state"], parallel.shard_batch(mesh, batch), key)
    loop["step"] += 1
  finish = lambda: jax.block_until_ready(loop["state"])
  start = time.perf_counter()
  step(next(batches))
  finish()
  compile_s = time.perf_counter() - start
  result = common.time_steps(batches, step, finish, warmup - 1, steps, config.train.batch_size)
  return {"side": "ours", "aug": aug, "devices": mesh.size, "prefetch": config.train.prefetch,
          "compile_s": compile_s, **result}


def run_json(command: list[str]) -> list[dict[str, Any]]:
  """Runs `command` (a Python script and its flags) in a fresh interpreter; its stdout's JSON lines."""
  done = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=False)
  if done.returncode:
    sys.exit(f"error: {' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
  return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def training_runs(config_args: list[str]) -> dict[tuple[str, str, int, int], list[dict[str, Any]]]:
  """{(side, preset, workers, threads): one result per round}, ours and the peer alternating."""
  common_args = [*config_args, f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}"]
  results: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
  for _ in range(FLAGS.rounds):
    for preset in PRESETS:
      jobs = [(("ours", preset, -1, -1), [os.path.join(HERE, "end_to_end.py"), "--side=ours"])]
      jobs += [(("peer", preset, int(w), int(t)), [os.path.join(HERE, "torch_pipeline.py"), f"--workers={w}",
                                                   f"--threads={t}"])
               for w in FLAGS.workers for t in FLAGS.peer_threads]
      for key, command in jobs:
        (result,) = run_json([*command, f"--aug={preset}", *common_args])
        print(json.dumps(result), flush=True)
        results.setdefault(key, []).append(result)
  return results


def median_of(results: list[dict[str, Any]], key: str) -> float:
  """The median of `key` over rounds."""
  return statistics.median(r[key] for r in results)


def training_table(results: dict[tuple[str, str, int, int], list[dict[str, Any]]]) -> str:
  """Markdown: ours and the peer's best setting per preset, the ratios, then the peer per workers and threads."""
  rate = lambda key: median_of(results[key], "img_per_s")
  wait = lambda key: f"{median_of(results[key], 'data_wait'):.1%}"
  ours = {p: ("ours", p, -1, -1) for p in PRESETS}
  peer = {p: max((k for k in results if k[:2] == ("peer", p)), key=rate) for p in PRESETS}
  rows = ["| end-to-end training | img/s | data-wait share | setting |", "|---|---|---|---|"]
  for p in PRESETS:
    first = results[ours[p]][0]
    rows.append(f"| ours, {LABELS[p]} | {rate(ours[p]):.2f} | {wait(ours[p])} | {first['devices']} host devices, "
                f"prefetch {first['prefetch']}{', augmentation in the jitted step' if p != 'none' else ''} |")
  for p in PRESETS:
    first = results[peer[p]][0]
    rows.append(f"| peer, {LABELS[p]} | {rate(peer[p]):.2f} | {wait(peer[p])} | "
                f"{'MONAI pipeline, ' if p != 'none' else ''}best of {'/'.join(FLAGS.workers)} DataLoader workers: "
                f"{first['workers']}, {first['threads']} thread(s) |")
  for p in PRESETS:
    rows.append(f"| **ratio ours / peer, {LABELS[p]}** | **{rate(ours[p]) / rate(peer[p]):.2f}x** | | |")
  rows += ["", "| peer, DataLoader workers, threads | "
           + " | ".join(f"{LABELS[p]}: img/s | data-wait" for p in PRESETS) + " |", "|---|" + "---|---|" * len(PRESETS)]
  for w in FLAGS.workers:
    for t in FLAGS.peer_threads:
      keys = [("peer", p, int(w), int(t)) for p in PRESETS]
      rows.append(f"| {w}, {results[keys[0]][0]['threads']} | "
                  + " | ".join(f"{rate(k):.2f} | {wait(k)}" for k in keys) + " |")
  return "\n".join(rows)


def inference_table(settings: list[dict[str, Any]]) -> str:
  """Markdown: seconds per 1024² slice by engine, per window setting."""
  peer = all("monai" in s for s in settings)
  rows = ["| sliding window, s per 1024² slice | XLA | ONNX Runtime | MONAI + PyTorch | MONAI / XLA "
          "| MONAI / ONNX Runtime |", "|---|---|---|---|---|---|"]
  for s in settings:
    monai = (f"{s['monai']:.2f} | {s['monai'] / s['xla']:.2f}x | {s['monai'] / s['onnx']:.2f}x" if peer
             else "- | - | -")
    windows = f"{s['windows']} window{'s' * (s['windows'] > 1)}, batches of {s['batch']}"
    rows.append(f"| {s['window'][0]}², overlap {s['overlap']:g} ({windows}) | "
                f"{s['xla']:.2f} | {s['onnx']:.2f} | {monai} |")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  if FLAGS.side == "ours":
    print(json.dumps(measure_ours(config, FLAGS.aug, FLAGS.warmup, FLAGS.steps)))
    return
  if FLAGS.warmup < 1 or FLAGS.steps < 1:
    sys.exit("error: --warmup and --steps must be >= 1 (ours compiles in the first warm-up step)")
  config_args = [a for a in sys.argv[1:] if a.startswith("--config")]  # the same config for every subprocess
  load_before = os.getloadavg()
  results = training_runs(config_args)
  settings = []
  if FLAGS.infer_slices:
    command = [os.path.join(HERE, "inference_engines.py"), "--json", f"--windows={FLAGS.windows}",
               f"--slices={FLAGS.infer_slices}", *([f"--workdir={FLAGS.infer_workdir}"] if FLAGS.infer_workdir else [])]
    settings = [s for s in run_json(command) if "window" in s]
    for s in settings:
      print(json.dumps(s), flush=True)
  load_after = os.getloadavg()
  print(f"\nconfig {config_args or ['--config=configs/unet2d.py:vnc']}: batch {config.train.batch_size} of "
        f"{config.train.patch_size}², {FLAGS.steps} timed steps after {FLAGS.warmup}, {FLAGS.rounds} round(s) "
        f"(medians); {os.cpu_count()} cores; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}\n")
  print(training_table(results))
  if settings:
    print()
    print(inference_table(settings))


if __name__ == "__main__":
  app.run(main)
