"""What every entry point (train, evaluate, explain, export, sweep) does the same way.

Flags parsed with a missing config file or bad `--config.*` names or values turned into one line; the
config checked and the devices set before JAX starts; and whatever stops the run (bad input, Ctrl-C, a
full disk) reported as one `error: ...` line with a non-zero exit, never a traceback.
"""

import errno
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
  """Quiet logs, the config checked (`config_check.validate`), XLA devices, kernels and compilation cache chosen."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config_check.validate(config, sections)
  parallel.use_host_devices(config.host_devices)  # before JAX starts its backends
  parallel.use_compilation_cache()
  if forward_only:
    parallel.use_inference_kernels()


def _file_in_the_way(path: str) -> str | None:
  """The first part of `path` that exists as a file where a folder is needed, if any."""
  parts = os.path.abspath(path).split(os.sep)
  for i in range(2, len(parts)):
    prefix = os.sep.join(parts[:i])
    if os.path.isfile(prefix):
      return prefix
  return None


def os_error_line(e: OSError) -> str:
  """What an OSError means for the user, by its errno, on one line: what is wrong with which path and what to do.

  A full disk says to free space; a file or folder in the way, a missing permission or a read-only disk
  say so, with the path; anything else is told as the system tells it.
  """
  first, second = e.filename, e.filename2  # a rename or copy has both; the second is where it writes
  path = second if second is not None and e.errno in (errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY) else first
  path = os.fsdecode(path) if path is not None else ""
  named = repr(path) if path else "the output"
  reason = e.strerror or _one_line(e)
  at = f" ({path})" if path else ""
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return f"{reason}{at}; free disk space or choose another folder, then rerun"
  if e.errno == errno.EISDIR:
    return f"{named} is a folder, where a file is needed; give a file name, or choose another path"
  if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
    kind = "a file" if os.path.isfile(path) else "a folder" if os.path.isdir(path) else "something"
    return f"{named} already exists as {kind}, in the way of what this run writes; choose another path or move it away"
  if e.errno == errno.ENOTDIR:
    blocking = next((b for b in (_file_in_the_way(p) for p in (second, first) if p) if b), None)
    why = f"{blocking!r} is a file, not a folder" if blocking else "a part of it is a file, not a folder"
    return f"cannot use {named}: {why}; choose another path"
  if e.errno in (errno.EACCES, errno.EPERM):
    return (f"permission denied for {named}; use a folder you may write to (a file you may read), or change its "
            "permissions")
  if e.errno == errno.EROFS:
    return f"{named} is on a read-only file system; choose a folder on a writable disk"
  if e.errno == errno.ENOENT:
    return f"{reason}{at}; check the path (was a folder removed while the run wrote into it?), then rerun"
  return f"{reason}{at}; check the path and the disk, then rerun"


def run(body: Callable[[], None], interrupted: str) -> None:
  """Runs `body`, turning what stops it into one `error: ...` line; `interrupted` is said on Ctrl-C."""
  try:
    body()
  except InputError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"error: interrupted; {interrupted}")
  except OSError as e:  # disk full, a file in the way of a folder, no permission, folder removed under us, ...
    sys.exit(f"error: {os_error_line(e)}")
