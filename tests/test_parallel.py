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
