"""Where the train step's time goes: an XLA profile of forward + backward, grouped by kind of work.

  python benchmarks/train_profile.py [--config=configs/unet2d.py:vnc] [--batch=4] [--repeats=2]

Traces the jitted value-and-gradient of the default 2D U-Net's loss (one device, a batch of
--batch 256x256 patches, no optimiser) with `jax.profiler`, matches each executed XLA op of the
trace to its HLO instruction, and sums the op times into: convolutions (forward, gradient with
respect to the input, gradient with respect to the weights), matrix products (1x1 convolutions and
the linear resize), reductions (BatchNorm statistics, loss sums), layout copies (transposes) and
other elementwise work. Each forward 3x3 convolution is also listed with its achieved GFLOP/s, to
compare with the same layer in PyTorch (`--peer`, needs benchmarks/requirements.txt).
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable

from absl import app, flags

import common

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_integer("batch", 4, "Patches per step (on one device).")
flags.DEFINE_integer("repeats", 2, "Traced steps (times are averaged).")
flags.DEFINE_bool("peer", True, "Also time each forward 3x3 convolution in PyTorch (channels_last, all cores).")

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\w+)\((.*)$")
COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")


def parse_hlo(text: str) -> tuple[dict[str, dict], dict[str, set[str]]]:
  """(instruction name -> {shape, opcode, calls, op_name}, computation name -> opcodes in it)."""
  instructions, opcodes, current = {}, collections.defaultdict(set), None
  for line in text.splitlines():
    if (m := COMPUTATION.match(line)) and "=" not in line.split("{")[0]:
      current = m.group(1)
      continue
    if not (m := INSTRUCTION.match(line)):
      continue
    name, _, dims, opcode, rest = m.groups()
    opcodes[current].add(opcode)
    calls = re.search(r"calls=%([\w.\-]+)", rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = {"shape": tuple(int(d) for d in dims.split(",") if d), "opcode": opcode,
                          "calls": calls.group(1) if calls else None,
                          "op_name": op_name.group(1) if op_name else ""}
  return instructions, opcodes


def category(inst: dict, opcodes: dict[str, set[str]]) -> str:
  """The kind of work of one executed instruction."""
  inside = opcodes.get(inst["calls"], set()) | {inst["opcode"]}
  if "convolution" in inside:
    if inst["op_name"].startswith("transpose(") or "/transpose(" in inst["op_name"]:
      return "conv backward (input)"
    if inst["op_name"]:
      return "conv forward"
    return "conv backward (weights)"
  if "dot" in inside:
    return "matmul (1x1 conv, resize)"
  if "reduce" in inside:
    return "reductions (BatchNorm, loss)"
  if "transpose" in inside or inst["opcode"] == "copy":
    return "layout copies (transpose)"
  return "elementwise and other"


def traced_op_ms(instructions: dict[str, dict], run: Callable[[], None], repeats: int) -> collections.Counter:
  """Instruction name -> ms per call of `run` (traced `repeats` times) for the executed ops of `instructions`."""
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(repeats):
        run()
    with gzip.open(glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)[0]) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      per_op[e["name"]] += e["dur"] / 1000 / repeats
  return per_op


def category_ms(per_op: collections.Counter, instructions: dict[str, dict],
                opcodes: dict[str, set[str]]) -> collections.Counter:
  """Kind of work (`category`) -> ms, summed over `per_op`."""
  totals = collections.Counter()
  for name, ms in per_op.items():
    totals[category(instructions[name], opcodes)] += ms
  return totals


def torch_conv_ms(batch: int, size: int, cin: int, cout: int) -> float:
  """Median ms of one forward 3x3 convolution in PyTorch (channels_last, all cores)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  x = torch.randn(batch, cin, size, size).to(memory_format=torch.channels_last)
  conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
  times = []
  with torch.no_grad():
    for i in range(7):
      t0 = time.perf_counter()
      conv(x)
      if i >= 2:
        times.append(time.perf_counter() - t0)
  return 1000 * sorted(times)[len(times) // 2]


def main(argv: list[str]) -> None:
  del argv
  from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
  parallel.use_host_devices(1)  # train.py's XLA flags, on one device; before JAX starts its backends
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import build_model  # pylint: disable=g-import-not-at-top
  from unet_jax.training import losses, trainer  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  model = build_model(config.model)
  shape = (FLAGS.batch, *trainer.patch_shape(config), 1)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(size=shape), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=shape) > 0.7, jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), image, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, image, train=True, mutable=["batch_stats"])
    return losses.loss_value(config.train.loss, logits, mask, config.train.smooth)
  step = jax.jit(jax.value_and_grad(loss))
  compiled = step.lower(variables["params"]).compile()
  instructions, opcodes = parse_hlo(compiled.as_text())
  jax.block_until_ready(step(variables["params"]))
  t0 = time.perf_counter()
  for _ in range(FLAGS.repeats):
    jax.block_until_ready(step(variables["params"]))
  wall = (time.perf_counter() - t0) / FLAGS.repeats
  per_op = traced_op_ms(instructions, lambda: jax.block_until_ready(step(variables["params"])), FLAGS.repeats)
  totals = category_ms(per_op, instructions, opcodes)
  traced = sum(totals.values())
  print(f"{jax.devices()[0].platform}, 1 device; forward + backward of batch {FLAGS.batch} of {shape[1:-1]}: "
        f"{1000 * wall:.0f} ms per step untraced, {traced:.0f} ms in XLA ops traced (the rest: probably "
        f"convolutions XLA runs asynchronously with its own kernels, whose time the trace misses)")
  for name, ms in totals.most_common():
    print(f"  {name:30s} {ms:7.1f} ms  {ms / traced:6.1%}")

  print("forward 3x3 convolutions (ms per step; GFLOP/s):")
  for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
    inst = instructions[name]
    if category(inst, opcodes) != "conv forward" or len(inst["shape"]) != 4:
      continue
    layer = inst["op_name"].split("/")[-2] if "/" in inst["op_name"] else name
    block = inst["op_name"].split("/")[-3] if inst["op_name"].count("/") > 1 else ""
    kernel = variables["params"].get(block, {}).get(layer, {}).get("kernel")
    if kernel is None or kernel.shape[:2] != (3, 3):
      continue
    b, h, w, cout = inst["shape"]
    cin = kernel.shape[2]
    gflop = 2 * b * h * w * cin * cout * 9 / 1e9
    line = f"  {block + '/' + layer:16s} {h:4d}^2 {cin:4d}->{cout:<4d} " + (
        f"{ms:6.1f} ms {gflop / ms * 1e3:6.0f} GFLOP/s" if ms >= 0.5 else "  (XLA's own kernel, asynchronous: not traced)")
    if FLAGS.peer:
      peer = torch_conv_ms(b, h, cin, cout)
      line += f"   PyTorch {peer:6.1f} ms {gflop / peer * 1e3:6.0f} GFLOP/s"
    print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
