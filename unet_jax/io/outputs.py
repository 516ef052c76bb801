"""Where results go: folders checked before any work, files replaced atomically, inputs never overwritten.

A run that fails (bad input, disk full, Ctrl-C) leaves earlier results byte-identical: every file is
written to a temporary name in its folder and renamed over the old one only when complete. A training
workdir is locked (`lock_workdir`) so that a second run on it is refused instead of mixing checkpoints;
the lock is the kernel's (flock), so a run killed with -9 leaves no stale lock.
"""

import contextlib
import fcntl
import json
import os
import tempfile
from typing import IO, Any, Iterator, Sequence

from unet_jax.errors import InputError


def check_writable(folder: str, what: str) -> None:
  """Creates `folder` if needed and proves it writable; one-line InputError otherwise."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise InputError(f"{what} {folder!r} is a file, not a folder; choose another path")
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise InputError(f"{what} {folder!r} cannot be written ({e.strerror or e}); choose a writable folder") from e


def check_not_inputs(outputs: Sequence[str], inputs: Sequence[str]) -> None:
  """Raises InputError when an output path is one of the input files."""
  real = {os.path.realpath(p) for p in inputs if p}
  for path in outputs:
    if os.path.realpath(path) in real:
      raise InputError(f"output {path} would overwrite the input of the same name; choose another --output_dir")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """A temporary path beside `path`, renamed to `path` when the block succeeds, removed when it fails."""
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
