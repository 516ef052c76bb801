"""Folders and zarr stores named by local paths or fsspec URLs (s3://, gs://, file://, ...), with one-line errors.

Chunked segmentation reads its input and writes its output chunk by chunk through zarr, on local disk
and in object stores alike. Its small records (progress markers, run records) are JSON files written
atomically: under a temporary name renamed when complete on local disk, as one PUT (atomic) in an
object store. Object stores cannot rename a folder, which is why `Folder.remote` tells the caller to
build in place there.

A `file://` URL is a local path. Other URLs go through fsspec, which takes credentials and endpoints
from where each filesystem looks for them: for S3 (s3fs) the AWS_* environment variables or ~/.aws, and
AWS_ENDPOINT_URL for an S3-compatible server (MinIO, Ceph); for gs:// (gcsfs, installed separately)
the Google application credentials. Worker processes inherit the environment of the process that
starts them.

`image_fingerprint` identifies an image's content cheaply enough to run before every resume: its
metadata, the sizes and modification stamps (mtime, ETag) of its chunk files, and the bytes of a few
of them. A store replaced by another of the same shape changes it.
"""

import hashlib
import json
import os
import shutil
import uuid
from typing import Any

import dask.array
import fsspec
import zarr
import zarr.storage

from unet_jax.errors import InputError
from unet_jax.io import outputs

_BUCKETS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # protocols whose first path part is a bucket
_SAMPLED_CHUNKS = 8  # chunk files whose bytes enter a fingerprint


def normalize(path: str) -> str:
  """`path` without a trailing '/', and a file:// URL as the local path it names."""
  path = path[len("file://"):] if path.startswith("file://") else path
  protocol, sep, rest = path.partition("://")
  return protocol + sep + rest.rstrip("/") if sep else (path.rstrip("/") or path)


def is_remote(path: str) -> bool:
  """Whether `path` is a URL of a filesystem other than the local one."""
  return "://" in normalize(path)


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
  """The fsspec filesystem of `url` and the path within it; InputError for an unknown or uninstalled protocol."""
  protocol = url.split("://", 1)[0]
  try:
    fs, path = fsspec.core.url_to_fs(url)
  except ImportError as e:
    raise InputError(f"{url}: {protocol}:// URLs need a package that is not installed ({e}); install it, "
                     "e.g. pip install gcsfs for gs://") from None
  except ValueError as e:
    raise InputError(f"{url}: not a usable URL ({e}); use a local path or a URL such as s3://bucket/vol.ome.zarr, "
                     "gs://... or file://...") from None
  if not path.strip("/"):
    raise InputError(f"{url}: the URL names no bucket or folder; give e.g. s3://bucket/vol.ome.zarr")
  return fs, path.rstrip("/")


def check_bucket(url: str) -> None:
  """InputError when the bucket of an object-store `url` does not exist or cannot be reached."""
  if not is_remote(url) or url.split("://", 1)[0] not in _BUCKETS:
    return
  fs, path = filesystem(url)
  bucket = path.split("/", 1)[0]
  try:
    found = fs.exists(bucket)
  except Exception as e:  # pylint: disable=broad-except  (credentials, DNS, refused connections: each fs its own)
    raise InputError(f"cannot reach the bucket {bucket!r} of {url} ({_one_line(e)}); check the URL, the "
                     "endpoint (AWS_ENDPOINT_URL) and the credentials") from None
  if not found:
    raise InputError(f"the bucket {bucket!r} of {url} does not exist (or these credentials cannot see it); "
                     "create it or check the URL")


def zarr_store(url: str, read_only: bool = False) -> zarr.storage.StoreLike:
  """A zarr store at a local path or fsspec URL."""
  url = normalize(url)
  if not is_remote(url):
    return zarr.storage.LocalStore(url, read_only=read_only)
  filesystem(url)  # unknown protocols in one line
  try:
    return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"cannot open {url} ({_one_line(e)}); check the URL") from None


class ZarrLocation:
  """An OME-Zarr image at an fsspec URL, read like `ome_zarr.io.ZarrLocation` (`root_attrs`, `load`)."""

  def __init__(self, url: str):
    check_bucket(url)
    try:
      self._group = zarr.open_group(zarr_store(url, read_only=True), mode="r")
      attrs = self._group.attrs.asdict()
    except InputError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (zarr's GroupNotFoundError, the filesystem's own)
      raise InputError(f"OME-Zarr image not found: {url}; check the URL ({_one_line(e)})") from None
    self.root_attrs = attrs.get("ome", attrs)  # NGFF 0.5 keeps its metadata under "ome"

  def load(self, subpath: str) -> dask.array.Array:
    return dask.array.from_zarr(self._group[subpath])


class Folder:
  """A folder on local disk or in an object store: JSON records, listings, removal, zarr stores."""

  def __init__(self, url: str):
    self.url = normalize(url)
    self.remote = is_remote(self.url)
    self.fs, self.root = filesystem(self.url) if self.remote else (None, self.url)

  def join(self, *names: str) -> str:
    """The path or URL of `names` inside this folder."""
    return "/".join([self.url, *names]) if self.remote else os.path.join(self.url, *names)

  def _path(self, *names: str) -> str:
    return "/".join([self.root, *names]) if self.remote else os.path.join(self.root, *names)

  def folder(self, *names: str) -> "Folder":
    return Folder(self.join(*names))

  def check_writable(self, what: str) -> None:
    """Creates the folder if needed and proves it writable; one-line InputError otherwise."""
    if not self.remote:
      return outputs.check_writable(self.url, what)
    check_bucket(self.url)
    probe = self._path(f".unet_jax-write-test-{os.getpid()}")
    try:
      self.fs.pipe_file(probe, b"")
      self.fs.rm_file(probe)
    except Exception as e:  # pylint: disable=broad-except
      raise InputError(f"{what} {self.url!r} cannot be written ({_one_line(e)}); check the URL and the "
                       "credentials") from None

  def exists(self, *names: str) -> bool:
    if not self.remote:
      return os.path.exists(self._path(*names))
    self.fs.invalidate_cache()  # other processes write here too
    return self.fs.exists(self._path(*names))

  def names(self, *names: str) -> set[str]:
    """The names of the entries directly inside `names` (empty when it does not exist)."""
    path = self._path(*names)
    if not self.remote:
      return set(os.listdir(path)) if os.path.isdir(path) else set()
    self.fs.invalidate_cache()
    try:
      return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False)}
    except FileNotFoundError:
      return set()

  def read_json(self, *names: str) -> Any | None:
    """The JSON document at `names`, or None when it is missing or unreadable (a torn write of a killed run)."""
    try:
      if not self.remote:
        with open(self._path(*names)) as f:
          return json.load(f)
      self.fs.invalidate_cache()
      return json.loads(self.fs.cat_file(self._path(*names)))
    except (OSError, ValueError):
      return None

  def write_json(self, document: Any, *names: str) -> None:
    """Writes `document` at `names` atomically (a rename on local disk, one PUT in an object store)."""
    path, text = self._path(*names), json.dumps(document, indent=2).encode()
    if self.remote:
      return self.fs.pipe_file(path, text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"  # unique per writer: never removed by another process mid-write
    try:
      with open(tmp, "wb") as f:
        f.write(text)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)

  def remove(self, *names: str) -> None:
    """Removes `names` (a file or a folder with everything in it); nothing when it is missing."""
    path = self._path(*names)
    if not self.remote:
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      elif os.path.lexists(path):
        os.remove(path)
      return
    self.fs.invalidate_cache()
    try:
      self.fs.rm(path, recursive=True)
    except FileNotFoundError:
      pass

  def rename(self, name: str, to: str) -> None:
    """Renames the entry `name` to `to` (replacing nothing: `to` must not exist); local folders only."""
    if self.remote:
      raise NotImplementedError("object stores cannot rename; build in place")
    os.replace(self._path(name), self._path(to))

  def zarr_store(self, *names: str) -> zarr.storage.StoreLike:
    return zarr_store(self.join(*names))


def as_json(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples as lists, ...), for comparing a stored record with a new one."""
  return json.loads(json.dumps(value, default=str))


def digest(value: Any) -> str:
  """sha256 of `value` as sorted JSON."""
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _stamp(info: dict[str, Any]) -> str:
  """What changes when a file is rewritten: an object store's ETag, else the modification time."""
  for key in ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "updated", "last_modified"):
    if info.get(key) is not None:
      return str(info[key])
  return ""


def image_fingerprint(url: str) -> dict[str, Any]:
  """What identifies the OME-Zarr image at `url`: shape, dtype and chunks of its first dataset, a digest of its
  metadata and one of its chunk files (names, sizes, modification stamps, and the bytes of a few of them)."""
  url = normalize(url)
  group = zarr.open_group(zarr_store(url, read_only=True), mode="r")
  attrs = group.attrs.asdict()
  meta = attrs.get("ome", attrs)
  dataset = meta["multiscales"][0]["datasets"][0]["path"]
  array = group[dataset]
  fs, root = filesystem(url) if is_remote(url) else (fsspec.filesystem("file"), os.path.abspath(url))
  fs.invalidate_cache()
  files = fs.find(f"{root}/{dataset}", detail=True)
  listing = sorted((name[len(root):], int(info.get("size") or 0), _stamp(info)) for name, info in files.items())
  chunks = [name for name, _, _ in listing if not os.path.basename(name).startswith((".z", "zarr.json"))]
  sampled = hashlib.sha256()
  for name in chunks[::max(1, -(-len(chunks) // _SAMPLED_CHUNKS))]:
    sampled.update(fs.cat_file(root + name))
  return {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
          "metadata": digest([attrs, array.metadata.to_dict()]), "files": len(listing),
          "listing": digest(listing), "sampled": sampled.hexdigest()}


def file_fingerprint(url: str) -> dict[str, Any]:
  """What identifies a single file (a TIFF mask): its size, modification stamp and a digest of its first MiB."""
  url = normalize(url)
  fs, path = filesystem(url) if is_remote(url) else (fsspec.filesystem("file"), os.path.abspath(url))
  fs.invalidate_cache()
  info = fs.info(path)
  with fs.open(path, "rb") as f:
    head = hashlib.sha256(f.read(1 << 20)).hexdigest()
  return {"size": int(info.get("size") or 0), "stamp": _stamp(info), "head": head}
