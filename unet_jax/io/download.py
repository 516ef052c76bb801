"""Download of the EPFL Lucchi stacks: resumable (HTTP Range), atomic (.part + rename), checked."""

import os
import urllib.error
import urllib.request

from unet_jax.errors import InputError
from unet_jax.io import stacks

LUCCHI_URL = "https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/%20ElectronMicroscopy_Hippocampus/"
LUCCHI_SHAPE = (165, 768, 1024)
LUCCHI_BYTES = 129_919_357  # each of the four files: a 165 x 768 x 1024 uint8 TIFF, exactly this size
OFFLINE_HINT = ("offline? use --config=configs/unet2d.py:vnc or :synthetic, or point "
                "--config.data.root at a folder holding the four Lucchi files")

STACK_FILES = {"train": ("training.tif", "training_groundtruth.tif"),
               "test": ("testing.tif", "testing_groundtruth.tif")}  # Lucchi's names; any folder may use them


def check_size(path: str, size: int) -> None:
  """Raises InputError unless the file at `path` is exactly `size` bytes."""
  found = os.path.getsize(path)
  if found != size:
    raise InputError(f"{path} is {found:,} bytes, expected {size:,}; delete it to download again")


def fetch(url: str, path: str, timeout: float = 30.0, chunk: int = 1 << 20, size: int | None = None) -> None:
  """Downloads `url` to `path`, resuming a previous `path`.part, renaming only when complete.

  With `size`, the .part is renamed only when it holds exactly `size` bytes (InputError otherwise).
  """
  part = path + ".part"
  have = os.path.getsize(part) if os.path.exists(part) else 0
  if size is not None and have >= size:  # complete (or too long) already: nothing left to ask for
    check_size(part, size)
    os.replace(part, path)
    return
  request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
  with urllib.request.urlopen(request, timeout=timeout) as response:
    if have and response.status != 206:  # server ignored Range: start again
      have = 0
    total = response.headers.get("Content-Length")
    expected = have + int(total) if total is not None else None
    with open(part, "ab" if have else "wb") as f:
      while block := response.read(chunk):
        f.write(block)
  if expected is not None and os.path.getsize(part) != expected:
    raise OSError(f"incomplete download of {url}: {os.path.getsize(part)} of {expected} bytes")
  if size is not None:
    check_size(part, size)
  os.replace(part, path)


def check_stack(path: str, shape: tuple[int, ...]) -> None:
  """Raises InputError unless the TIFF at `path` reads completely and has `shape`."""
  try:
    with stacks.StackReader(path) as reader:
      found = reader.shape
      reader.read_raw()  # every page decodes: catches a truncated or corrupt file
  except InputError as e:
    raise InputError(f"{path} is damaged ({e}); delete it to download again") from e
  if found != tuple(shape):
    raise InputError(f"{path} has shape {found}, expected {tuple(shape)}; delete it to download again")


def ensure_lucchi(root: str, base_url: str = LUCCHI_URL, shape: tuple[int, ...] = LUCCHI_SHAPE,
                  timeout: float = 30.0, size: int = LUCCHI_BYTES) -> None:
  """Makes sure the four Lucchi files exist under `root` with `size` bytes and `shape`, downloading the missing ones."""
  os.makedirs(root, exist_ok=True)
  for name in (f for pair in STACK_FILES.values() for f in pair):
    path = os.path.join(root, name)
    if not os.path.exists(path):
      try:
        fetch(base_url + name, path, timeout=timeout, size=size)
      except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"Lucchi file {name} is not in {root} and could not be downloaded "
                         f"({reason}); {OFFLINE_HINT}") from e
    check_size(path, size)
    check_stack(path, shape)

