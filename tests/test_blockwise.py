"""Block-wise segmentation on Dask (unet_jax/inference/chunked.py, cluster.py) and fsspec URLs (io/stores.py):
a kill at each stage boundary then a rerun, a replaced input or model starting afresh, a complete output not
computed again, bad URLs in one line (fast, Dask's synchronous scheduler); two worker processes equal to the
synchronous scheduler for 2D, 2.5D and 3D models, a worker SIGKILLed mid-block, an interrupted client, s3://
input and output on a local S3 server (moto), and the command line (slow: processes and clusters)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import ndimage

from unet_jax.errors import InputError
from unet_jax.inference import chunked, cluster, tiling
from unet_jax.inference.predictor import Predictor
from unet_jax.io import ngff, stores

from test_ngff import IDENTITY, VOXEL, blobs, eval_config, labels_match, unet  # pylint: disable=wrong-import-position  (tests/ is on the import path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, CHUNK = (4, 24, 24), (2, 12, 12)  # 8 blocks, objects across every face


class Killed(BaseException):
  """SIGKILL's stand-in inside this process: nothing between the fault and the test catches it."""


def read_output(out: str) -> dict[str, np.ndarray]:
  """The arrays of out/segmentation.ome.zarr (a folder or a URL), with its axes and voxel size."""
  final = f"{out}/{chunked.OUTPUT}"
  probabilities, axes, voxel = ngff.read_image(final)
  return {"probabilities": probabilities, "mask": ngff.read_image(f"{final}/labels/mask")[0],
          "instances": ngff.read_image(f"{final}/labels/instances")[0], "axes": np.array(axes), "voxel": np.array(voxel)}


def assert_same_output(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 0.0) -> None:
  np.testing.assert_allclose(a["probabilities"].astype(np.float32), b["probabilities"].astype(np.float32), atol=atol)
  np.testing.assert_array_equal(a["mask"], b["mask"])
  assert labels_match(a["instances"], b["instances"]) and a["instances"].max() == b["instances"].max()
  np.testing.assert_array_equal(a["axes"], b["axes"])
  np.testing.assert_allclose(a["voxel"], b["voxel"])


def identity_run(folder, out: str, volume: np.ndarray | None = None, variables=None, **kwargs) -> dict:
  """Chunked segmentation of folder/v.ome.zarr (written from `volume` if given) by a network that returns its
  input, into folder/out: instances are those of volume >= 0.5 (tiling.volume_predictor is patched)."""
  if volume is not None:
    ngff.write_image(str(folder / "v.ome.zarr"), volume, VOXEL, chunks=(2, 8, 8))
  with ngff.ZarrStack(str(folder / "v.ome.zarr")) as stack:
    predictor = Predictor.create(unet(2)[0], variables, eval_config(8, CHUNK))
    return chunked.segment_volume(predictor, stack, str(folder / out), CHUNK, probability_dtype="uint8",
                                  progress=kwargs.pop("progress", False), **kwargs)


@pytest.fixture(name="identity")
def _identity(monkeypatch):
  monkeypatch.setattr(tiling, "volume_predictor", lambda *a: IDENTITY)


@pytest.fixture(scope="module", name="reference")
def _reference(tmp_path_factory):
  """The uninterrupted output of the identity network on blobs(SHAPE)."""
  folder = tmp_path_factory.mktemp("reference")
  with pytest.MonkeyPatch.context() as m:
    m.setattr(tiling, "volume_predictor", lambda *a: IDENTITY)
    summary = identity_run(folder, "out", blobs(SHAPE, seed=11, fraction=0.15))
  output = read_output(str(folder / "out"))
  assert labels_match(output["instances"], ndimage.label(blobs(SHAPE, seed=11, fraction=0.15) > 0)[0])
  assert summary["blocks_computed"] == summary["chunks"] == 8 and summary["instances"] > 10
  return output


def fail_at(monkeypatch, point: str, hit: int = 1) -> None:
  """chunked._fault raises Killed the `hit`-th time the run reaches `point`."""
  seen = []
  def fault(name):
    if name == point:
      seen.append(name)
      if len(seen) == hit:
        raise Killed(point)
  monkeypatch.setattr(chunked, "_fault", fault)


@pytest.mark.parametrize("point", chunked.FAULT_POINTS)
def test_a_kill_at_each_stage_boundary_then_a_rerun_gives_the_same_output(identity, monkeypatch, tmp_path, reference,
                                                                          point):
  """Every boundary: fresh start, mid-block, between the stages, mid-renumbering, the record marked complete,
  the old output removed, the rename, the work folder's cleanup, the end."""
  del identity
  with monkeypatch.context() as m:
    fail_at(m, point, hit=3 if point in ("block", "instance") else 1)
    with pytest.raises(Killed):
      identity_run(tmp_path, "out", blobs(SHAPE, seed=11, fraction=0.15))
  summary = identity_run(tmp_path, "out")
  assert_same_output(read_output(str(tmp_path / "out")), reference)
  assert sorted(os.listdir(tmp_path / "out")) == [chunked.OUTPUT]  # no .partial, no .work
  assert summary["chunks"] == 8 and summary["instances"] == reference["instances"].max()
  assert summary["blocks_computed"] == {"created": 8, "block": 6}.get(point, 0)  # only what was not recorded


def test_a_replaced_input_or_model_starts_afresh(identity, monkeypatch, tmp_path, capsys):
  """Same shape, dtype and chunks but other voxels: the fingerprint tells, the rerun computes every block."""
  del identity
  with monkeypatch.context() as m:
    fail_at(m, "block", hit=4)
    with pytest.raises(Killed):
      identity_run(tmp_path, "out", blobs(SHAPE, seed=1, fraction=0.15))
  capsys.readouterr()
  other = blobs(SHAPE, seed=2, fraction=0.15)
  summary = identity_run(tmp_path, "out", other, progress=True)  # rewritten in place, same name
  assert "(changed: input content); starting afresh" in capsys.readouterr().out
  assert summary["blocks_computed"] == 8
  assert labels_match(read_output(str(tmp_path / "out"))["instances"], ndimage.label(other > 0)[0])
  with monkeypatch.context() as m:
    fail_at(m, "block", hit=2)
    with pytest.raises(Killed):
      identity_run(tmp_path, "again", variables={"w": np.zeros(3, np.float32)})
  summary = identity_run(tmp_path, "again", variables={"w": np.ones(3, np.float32)}, progress=True)
  assert "(changed: variables content); starting afresh" in capsys.readouterr().out
  assert summary["blocks_computed"] == 8


def test_a_complete_output_is_not_computed_again(identity, tmp_path, capsys):
  del identity
  first = identity_run(tmp_path, "out", blobs(SHAPE, seed=3, fraction=0.15))
  chunk_file = tmp_path / "out" / chunked.OUTPUT / ngff.DATASET / "0.0.0"
  stamp = os.stat(chunk_file).st_mtime_ns
  capsys.readouterr()
  again = identity_run(tmp_path, "out", progress=True)
  assert "already complete" in capsys.readouterr().out and again["blocks_computed"] == 0
  assert again["instances"] == first["instances"] and os.stat(chunk_file).st_mtime_ns == stamp


@pytest.mark.parametrize("url,message", [
    ("foo://bucket/v.ome.zarr", "not a usable URL"),
    ("s3://", "names no bucket"),
    ("memory://nothing/v.ome.zarr", "OME-Zarr image not found"),
])
def test_bad_urls_are_one_line_input_errors(url, message):
  with pytest.raises(InputError, match=message) as error:
    ngff.ZarrStack(url)
  assert "\n" not in str(error.value)


def test_a_missing_filesystem_package_and_a_bad_scheduler_are_one_line():
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(InputError, match="need a package that is not installed") as error:
      stores.Folder("gs://bucket/out")
    assert "\n" not in str(error.value)
  with pytest.raises(InputError, match="'synchronous', 'local' or a Dask scheduler's address"):
    cluster.check_scheduler("host:8786")


def test_local_workers_are_kept_on_one_core_each(monkeypatch):
  """NPROC sizes XLA's CPU thread pools (one busy thread in a convolution with 1, two without, on 2 cores)."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=")
  env = cluster.worker_environment(1)
  assert env["NPROC"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="  # one device per worker; the rest kept


# ---- slow: worker processes, a local S3 server, the command line ----

@pytest.fixture(scope="module", name="s3")
def _s3():
  """A moto S3 server on 127.0.0.1 (a free port) with the bucket 'data'; its endpoint and fake credentials in the
  environment, which the worker processes started after it inherit."""
  import logging  # pylint: disable=g-import-not-at-top
  from moto.server import ThreadedMotoServer  # pylint: disable=g-import-not-at-top
  logging.getLogger("werkzeug").setLevel(logging.ERROR)
  server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
  server.start()
  host, port = server.get_host_and_port()
  env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  stores.filesystem("s3://data")[0].mkdir("data")
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()


@pytest.fixture(scope="module", name="dask_cluster")
def _dask_cluster(s3):
  """A LocalCluster of 2 worker processes (1 thread each) for the module's tests; its scheduler's address."""
  del s3
  import distributed  # pylint: disable=g-import-not-at-top
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, env=cluster.worker_environment(1), silence_logs=40) as c:
    yield c.scheduler_address


def model_run(path: str, out: str, ndim: int = 2, k: int = 0, window=16, chunk=(3, 16, 20), **kwargs) -> dict:
  """Chunked segmentation of the OME-Zarr at `path` by a tiny random U-Net, float32 probabilities."""
  model, variables = unet(ndim, 2 * k + 1)
  config = eval_config(window, chunk)
  with ngff.ZarrStack(path) as stack:
    return chunked.segment_volume(Predictor.create(model, variables, config), stack, out, chunk,
                                  probability_dtype="float32", **{"progress": False, **kwargs})


def write_volume(path: str, shape=(7, 37, 45), seed: int = 2) -> None:
  ngff.write_image(path, np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8), VOXEL, chunks=(2, 16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("ndim,k,window,chunk", [(2, 0, 16, (3, 16, 20)), (2, 1, 16, (2, 24, 16)),
                                                 (3, 0, (8, 16, 16), (5, 16, 24))], ids=["2d", "2.5d", "3d"])
def test_two_worker_processes_equal_the_synchronous_scheduler(dask_cluster, tmp_path, ndim, k, window, chunk):
  write_volume(str(tmp_path / "v.ome.zarr"))
  one = model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "one"), ndim, k, window, chunk)
  two = model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "two"), ndim, k, window, chunk, scheduler=dask_cluster)
  assert_same_output(read_output(str(tmp_path / "two")), read_output(str(tmp_path / "one")), atol=1e-5)
  assert two["chunks"] == one["chunks"] > 8 and two["instances"] == one["instances"]
  assert "synchronous" in one["scheduler"] and dask_cluster in two["scheduler"]


@pytest.mark.slow
def test_a_worker_killed_mid_block_is_replaced_and_the_output_is_the_same(tmp_path, monkeypatch):
  """A worker SIGKILLs itself after writing a block's probabilities (UNET_JAX_FAULT): the nanny starts another,
  the scheduler runs that block again elsewhere, the job completes with the synchronous scheduler's output."""
  write_volume(str(tmp_path / "v.ome.zarr"))
  model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "one"))
  monkeypatch.setenv("UNET_JAX_FAULT", f"block:{tmp_path / 'killed'}")  # inherited by the workers started below
  summary = model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "two"), scheduler="local", workers=2)
  assert os.path.exists(tmp_path / "killed")  # a worker did die mid-block
  assert_same_output(read_output(str(tmp_path / "two")), read_output(str(tmp_path / "one")), atol=1e-5)
  assert summary["blocks_computed"] == summary["chunks"]


@pytest.mark.slow
def test_an_interrupted_client_resumes_only_the_unfinished_blocks(dask_cluster, tmp_path, monkeypatch, capsys):
  import distributed  # pylint: disable=g-import-not-at-top
  write_volume(str(tmp_path / "v.ome.zarr"))
  model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "one"))
  completed = distributed.as_completed
  def interrupted(*args, **kwargs):
    for n, item in enumerate(completed(*args, **kwargs)):
      if n == 3:
        raise KeyboardInterrupt
      yield item
  with monkeypatch.context() as m:
    m.setattr(distributed, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
      model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "two"), scheduler=dask_cluster)
  with distributed.Client(dask_cluster) as client:  # tasks already running finish (and record) on their own
    while sum(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
      time.sleep(0.2)
  work = stores.Folder(str(tmp_path / "two" / chunked.WORK))
  done = len(chunked._finished(work, "block"))  # pylint: disable=protected-access
  capsys.readouterr()
  summary = model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "two"), scheduler=dask_cluster, progress=True)
  n = summary["chunks"]
  assert 3 <= done < n and summary["blocks_computed"] == n - done
  assert f"{done} of {n} chunks already done, {n - done} to compute" in capsys.readouterr().out
  assert_same_output(read_output(str(tmp_path / "two")), read_output(str(tmp_path / "one")), atol=1e-5)


@pytest.mark.slow
def test_s3_input_and_output_chunk_by_chunk(s3, dask_cluster, tmp_path):
  """An OME-Zarr in a bucket segmented by 2 workers into the bucket: the local synchronous result, axes and
  voxel size kept, nothing of the work left; then missing buckets and images in one line."""
  del s3
  write_volume(str(tmp_path / "v.ome.zarr"))
  fs = stores.filesystem("s3://data")[0]
  fs.put(str(tmp_path / "v.ome.zarr"), "data/vol.ome.zarr", recursive=True)
  model_run(str(tmp_path / "v.ome.zarr"), str(tmp_path / "local"))
  summary = model_run("s3://data/vol.ome.zarr", "s3://data/out", scheduler=dask_cluster)
  assert_same_output(read_output("s3://data/out"), read_output(str(tmp_path / "local")), atol=1e-5)
  assert summary["input"] == "s3://data/vol.ome.zarr" and summary["output"] == f"s3://data/out/{chunked.OUTPUT}"
  fs.invalidate_cache()
  assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("data/out")) == [chunked.OUTPUT]
  assert model_run("s3://data/vol.ome.zarr", "s3://data/out")["blocks_computed"] == 0  # complete: recognised
  cases = [(lambda: ngff.ZarrStack("s3://no-such-bucket/vol.ome.zarr"), "bucket 'no-such-bucket' of .* does not exist"),
           (lambda: ngff.ZarrStack("s3://data/missing.ome.zarr"), "OME-Zarr image not found: s3://data/missing"),
           (lambda: model_run(str(tmp_path / "v.ome.zarr"), "s3://no-such-bucket/out"), "bucket 'no-such-bucket'")]
  for call, message in cases:
    with pytest.raises(InputError, match=message) as error:
      call()
    assert "\n" not in str(error.value)


def evaluate(tmp_path, *args, env=None):
  return subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                         f"--workdir={tmp_path / 'run'}", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_local_cluster_killed_between_stages_then_rerun(tiny_config, tmp_path, s3):
  """evaluate.py's default (a LocalCluster, dashboard printed), its process SIGKILLed after removing the old output
  and before renaming the new one: the rerun completes with the synchronous scheduler's output; s3:// input in one
  line when its bucket is missing."""
  from test_inference import save_random_checkpoint  # pylint: disable=g-import-not-at-top
  save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  write_volume(str(tmp_path / "v.ome.zarr"), (3, 40, 50))
  args = [f"--input={tmp_path / 'v.ome.zarr'}", "--config.eval.chunk=(2,24,32)", "--workers=2"]
  result = evaluate(tmp_path, *args, f"--output_dir={tmp_path / 'one'}", "--scheduler=synchronous")
  assert result.returncode == 0, result.stderr
  result = evaluate(tmp_path, *args, f"--output_dir={tmp_path / 'two'}", env={"UNET_JAX_FAULT": f"replace:{tmp_path / 'k'}"})
  assert result.returncode == -9 and "dashboard http://127.0.0.1:" in result.stdout, result.stderr
  assert "segment: 100%" in result.stderr  # the progress bar
  result = evaluate(tmp_path, *args, f"--output_dir={tmp_path / 'two'}")
  assert result.returncode == 0, result.stderr
  assert_same_output(read_output(str(tmp_path / "two")), read_output(str(tmp_path / "one")))
  assert sorted(os.listdir(tmp_path / "two")) == [chunked.OUTPUT, chunked.SUMMARY]
  result = evaluate(tmp_path, "--input=s3://no-such-bucket/v.ome.zarr", f"--output_dir={tmp_path / 'three'}", env=s3)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and lines[-1].startswith("error: the bucket 'no-such-bucket'"), result.stderr


@pytest.mark.slow
def test_the_benchmark_prints_one_row_per_volume_and_worker_count():
  from script_runs import run_script  # pylint: disable=g-import-not-at-top
  result = run_script("benchmarks/chunked_segmentation.py", "--chunk=2,64,64", "--multiples=2", "--workers=1,2",
                      "--window=32", "--features=2", "--depth=1")
  assert result.returncode == 0, result.stderr
  rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 2x64x128 ")]
  assert [r[4].strip() for r in rows] == ["1", "2"] and all(float(r[5]) > 0 <= float(r[6]) for r in rows)
  assert len(rows[1][10].split(",")) == 2  # a peak RSS per worker
