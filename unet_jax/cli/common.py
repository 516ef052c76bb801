"""What every entry point (train, evaluate, explain, export, sweep) does the same way.

Flags parsed with a missing config file or bad `--config.*` names or values turned into one line; the
config checked and the devices set before JAX starts; and whatever stops the run (bad input, Ctrl-C, a
full disk) reported as one `error: ...` line with a non-zero exit, never a traceback.
"""

import os
import sys
from typing import Any, Callable, Sequence

from absl import flags, logging

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.training import parallel

program = ""  # how this process was started, "python train.py" or "unet-jax train" (set by main.run_command)


def _one_line(e: BaseException) -> str:
  """The message of `e` on one line; for an error raised inside a config file, that error's own message."""
  text = str(e).replace("\\n", "\n").replace("\\'", "'")
  if "Traceback (most recent call last)" in text:
    text = text.strip().splitlines()[-1]
  return " ".join(text.split()).strip("'\"")


def command_line() -> str:
  """This process's command as the user typed it (`python evaluate.py --workdir=...`), for reports."""
  return " ".join([program or f"python {sys.argv[0]}", *sys.argv[1:]])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a missing config file or an unknown or mistyped `--config.x=...` in one line."""
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(f"error: bad command line: {_one_line(e)}; check the flag or --config.* name against the config file")
  path = flags.FLAGS["config"].config_filename.split(":", 1)[0] if "config" in flags.FLAGS else ""
  if path and not os.path.isfile(path):  # ml_collections would only fail at the config's first use
    where = "" if os.path.isabs(path) else f" (relative to the current folder {os.getcwd()})"
    sys.exit(f"error: config file {path} not found{where}; pass --config=path/to/config.py[:variant]")
  return rest


def prepare(config: Any, sections: Sequence[str], forward_only: bool) -> None:
  """Quiet logs, the config checked (`config_check.validate`), XLA devices and kernels chosen."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config_check.validate(config, sections)
  parallel.use_host_devices(config.host_devices)  # before JAX starts its backends
  if forward_only:
    parallel.use_inference_kernels()


def run(body: Callable[[], None], interrupted: str) -> None:
  """Runs `body`, turning what stops it into one `error: ...` line; `interrupted` is said on Ctrl-C."""
  try:
    body()
  except InputError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"error: interrupted; {interrupted}")
  except OSError as e:  # disk full, folder removed under us, ...
    where = f" ({e.filename})" if e.filename else ""
    sys.exit(f"error: {e.strerror or _one_line(e)}{where}; free disk space or choose another folder, then rerun")
