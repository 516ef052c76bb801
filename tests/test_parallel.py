"""XLA_FLAGS set-up for CPU devices and inference kernels."""

from unet_jax.training import parallel


def test_host_devices_replace_an_earlier_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false")
  parallel.use_host_devices(2)
  assert parallel.os.environ["XLA_FLAGS"].split() == [
      "--xla_cpu_enable_fast_math=false", "--xla_force_host_platform_device_count=2",
      "--xla_cpu_enable_concurrency_optimized_scheduler=false"]


def test_host_devices_keep_the_users_scheduler(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true")
  parallel.use_host_devices(1)
  assert parallel.os.environ["XLA_FLAGS"].split() == [
      "--xla_cpu_enable_concurrency_optimized_scheduler=true", "--xla_force_host_platform_device_count=1"]


def test_inference_kernels_keep_the_users_choice(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  parallel.use_inference_kernels()
  assert parallel.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT")
  parallel.use_inference_kernels()
  assert parallel.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"


def test_compiled_programs_are_kept_where_the_user_says(monkeypatch, tmp_path):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))
  before = parallel.jax.config.jax_compilation_cache_dir
  try:
    parallel.use_compilation_cache()
    assert parallel.jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # empty: no cache; the setting is left alone
    parallel.jax.config.update("jax_compilation_cache_dir", None)
    parallel.use_compilation_cache()
    assert parallel.jax.config.jax_compilation_cache_dir is None
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    parallel.use_compilation_cache()
    assert parallel.jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "unet-jax" / "xla")
  finally:
    parallel.jax.config.update("jax_compilation_cache_dir", before)
