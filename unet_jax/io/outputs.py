"""Where results go: folders checked before any work, files replaced atomically, inputs never overwritten.

A run that fails (bad input, disk full, Ctrl-C) leaves earlier results byte-identical: every file is
written to a temporary name in its folder and renamed over the old one only when complete. A training
workdir is locked (`lock_workdir`) so that a second run on it is refused instead of mixing checkpoints;
the lock is the kernel's (flock), so a run killed with -9 leaves no stale lock. A run killed with -9
leaves its temporary files (`NAME.tmp-PID`) behind; the next run that checks or writes into that
folder removes those whose process no longer runs on this machine (`remove_stale_temps`).
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from typing import IO, Any, Iterator, Sequence

from unet_jax.errors import InputError


TEMP_NAME = re.compile(r".+\.tmp-(\d+)")  # atomic_path's and ngff.atomic_folder's temporary names
_swept: set[str] = set()  # folders already rid of stale temporary files by this process


def _running(pid: int) -> bool:
  """Whether process `pid` runs on this machine (it may belong to another user)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temps(folder: str) -> list[str]:
  """Removes the temporary files and folders (`NAME.tmp-PID`) in `folder` whose process no longer runs on
  this machine (killed with -9 mid-write); returns their paths. Once per folder and process. (A folder
  shared over the network by processes of several machines is not one they write at the same time.)"""
  folder = os.path.abspath(folder)
  if folder in _swept or not os.path.isdir(folder):
    return []
  _swept.add(folder)
  removed = []
  for entry in os.listdir(folder):
    match = TEMP_NAME.fullmatch(entry)
    if match and not _running(int(match.group(1))):
      path = os.path.join(folder, entry)
      with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
        removed.append(path)
  return removed


def check_writable(folder: str, what: str) -> None:
  """Creates `folder` if needed and proves it writable (removing stale temporary files in it); one-line
  InputError otherwise."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise InputError(f"{what} {folder!r} is a file, not a folder; choose another path")
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise InputError(f"{what} {folder!r} cannot be written ({e.strerror or e}); choose a writable folder") from e
  remove_stale_temps(folder)


def check_creatable(folder: str, what: str) -> None:
  """Proves that `folder` is, or can be made, a writable folder, creating nothing; one-line InputError otherwise."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise InputError(f"{what} {folder!r} is a file, not a folder; choose another path")
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f"{what} {folder!r} cannot be made: {existing!r} is a file, not a folder; choose another path")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f"{what} {folder!r} cannot be written ({existing!r} is not writable); choose a writable folder")


def check_not_inputs(outputs: Sequence[str], inputs: Sequence[str]) -> None:
  """Raises InputError when an output path is one of the input files."""
  real = {os.path.realpath(p) for p in inputs if p}
  for path in outputs:
    if os.path.realpath(path) in real:
      raise InputError(f"output {path} would overwrite the input of the same name; choose another --output_dir")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """A temporary path beside `path`, renamed to `path` when the block succeeds, removed when it fails (and by
  a later run if this process is killed before either: `remove_stale_temps`)."""
  remove_stale_temps(os.path.dirname(os.path.abspath(path)))
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, document: Any) -> None:
  """Writes `document` as indented JSON, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(document, f, indent=2)


def lock_workdir(workdir: str) -> IO[str]:
  """An exclusive lock on `workdir` held while the returned file stays open; InputError when taken."""
  handle = open(os.path.join(workdir, ".lock"), "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise InputError(f"workdir {workdir!r} is in use by {holder}; wait for that run to finish or choose "
                     "another --workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"process {os.getpid()}")
  handle.flush()
  return handle
