"""Lucchi download against a loopback HTTP server: fetch, resume, atomicity, size and shape checks, offline."""

import functools
import http.server
import inspect
import os
import socket
import threading

import numpy as np
import pytest
import tifffile

from unet_jax.errors import InputError
from unet_jax.io import data, download

SHAPE = (3, 8, 10)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
  """Serves files with HTTP Range support; files named 'cut_*' are cut off half way."""

  def log_message(self, *args):
    pass

  def do_GET(self):
    path = self.translate_path(self.path)
    if not os.path.isfile(path):
      self.send_error(404)
      return
    body = open(path, "rb").read()
    start = 0
    if "Range" in self.headers:
      start = int(self.headers["Range"].split("=")[1].split("-")[0])
      self.server.ranges.append(start)
      self.send_response(206)
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(body) - start))
    self.end_headers()
    payload = body[start:]
    if os.path.basename(path).startswith("cut_"):
      payload = payload[: len(payload) // 2]
    self.wfile.write(payload)


@pytest.fixture
def server(tmp_path):
  served = tmp_path / "served"
  served.mkdir()
  rng = np.random.default_rng(0)
  for name in [f for pair in data.STACK_FILES.values() for f in pair]:
    tifffile.imwrite(served / name, rng.integers(0, 2, SHAPE, dtype=np.uint8) * 255, photometric="minisblack")
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(served)))
  httpd.ranges = []
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield httpd, served, f"http://127.0.0.1:{httpd.server_address[1]}/"
  httpd.shutdown()


def served_size(served) -> int:
  """The byte size every served file has (the same shape and dtype, uncompressed): the fake LUCCHI_BYTES."""
  return (served / "training.tif").stat().st_size


def test_downloads_all_four_files(server, tmp_path):
  _, served, url = server
  root = tmp_path / "cache"
  download.ensure_lucchi(str(root), url, SHAPE, size=served_size(served))
  for name in [f for pair in data.STACK_FILES.values() for f in pair]:
    assert (root / name).read_bytes() == (served / name).read_bytes()
  assert not list(root.glob("*.part"))


def test_resumes_a_partial_download(server, tmp_path):
  httpd, served, url = server
  body = (served / "testing.tif").read_bytes()
  (tmp_path / "testing.tif.part").write_bytes(body[:100])
  download.fetch(url + "testing.tif", str(tmp_path / "testing.tif"))
  assert httpd.ranges == [100]
  assert (tmp_path / "testing.tif").read_bytes() == body


def test_cut_transfer_leaves_no_final_file(server, tmp_path):
  _, served, url = server
  (served / "cut_x.tif").write_bytes((served / "testing.tif").read_bytes())
  with pytest.raises(OSError):
    download.fetch(url + "cut_x.tif", str(tmp_path / "x.tif"))
  assert not (tmp_path / "x.tif").exists() and (tmp_path / "x.tif.part").exists()


def test_wrong_shape_is_rejected(server, tmp_path):
  _, served, url = server
  with pytest.raises(InputError, match=r"has shape \(3, 8, 10\), expected \(165, 768, 1024\)"):
    download.ensure_lucchi(str(tmp_path / "cache"), url, (165, 768, 1024), size=served_size(served))


def test_lucchi_size_is_pinned():
  assert download.LUCCHI_BYTES == 129_919_357
  assert inspect.signature(download.ensure_lucchi).parameters["size"].default == download.LUCCHI_BYTES


def test_present_file_of_wrong_size_is_refused(server, tmp_path):
  httpd, served, url = server
  root = tmp_path / "cache"
  root.mkdir()
  (root / "training.tif").write_bytes((served / "training.tif").read_bytes()[:-1])  # one byte short
  size = served_size(served)
  with pytest.raises(InputError) as e:
    download.ensure_lucchi(str(root), url, SHAPE, size=size)
  message = str(e.value)
  assert "\n" not in message
  assert str(root / "training.tif") in message and f"{size - 1:,} bytes" in message
  assert f"expected {size:,}" in message and "delete it to download again" in message


def test_downloaded_file_of_wrong_size_is_refused(server, tmp_path):
  httpd, served, url = server
  root = tmp_path / "cache"
  size = served_size(served)
  with pytest.raises(InputError, match=rf"training\.tif\.part is {size:,} bytes, expected {size + 1:,}; "
                                       "delete it to download again"):
    download.ensure_lucchi(str(root), url, SHAPE, size=size + 1)  # the server sends a complete, wrong file
  assert not (root / "training.tif").exists()


def test_complete_part_is_renamed_without_a_request(server, tmp_path):
  httpd, served, url = server
  body = (served / "testing.tif").read_bytes()
  (tmp_path / "testing.tif.part").write_bytes(body)
  download.fetch(url + "testing.tif", str(tmp_path / "testing.tif"), size=len(body))
  assert httpd.ranges == [] and (tmp_path / "testing.tif").read_bytes() == body
  assert not (tmp_path / "testing.tif.part").exists()


def test_too_long_part_is_not_renamed(server, tmp_path):
  _, served, url = server
  body = (served / "testing.tif").read_bytes()
  (tmp_path / "testing.tif.part").write_bytes(body + b"x")
  with pytest.raises(InputError, match="delete it to download again"):
    download.fetch(url + "testing.tif", str(tmp_path / "testing.tif"), size=len(body))
  assert not (tmp_path / "testing.tif").exists()


def test_offline_fails_fast_with_hint(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed again: nothing listens there
  with pytest.raises(InputError, match=r"could not be downloaded .*configs/unet2d.py:vnc or :synthetic"):
    download.ensure_lucchi(str(tmp_path / "cache"), f"http://127.0.0.1:{port}/", timeout=2.0)
