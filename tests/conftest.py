"""Suite-wide settings: 4 fake CPU devices for sharding tests, quiet TF, the shared data."""

import os
import tempfile
from pathlib import Path

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as `recast` does (recast/cli.py)
os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One compilation cache for the session, shared with the subprocesses tests start (the
# same tiny models compile once); fresh each run so no test depends on an earlier one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="recast-tests-jax-cache-"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECAST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """../shared/data (real GLUE/SuperGLUE JSONL and Wikipedia text); skips when absent."""
  if not (SHARED_DATA / "glue").is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (set RECAST_SHARED_DATA or check out "
                "../shared beside the repo)")
  return SHARED_DATA


@pytest.fixture(autouse=True)
def _clear_gin_bindings():
  """Each test starts from no gin bindings (a DATA_DIR bound by one test must not leak)."""
  yield
  import sys
  if "gin" in sys.modules:
    sys.modules["gin"].clear_config(clear_constants=False)


@pytest.fixture(scope="session")
def ray_session() -> str:
  """The session's one local Ray, started as recast starts one (launcher.connect_ray: token
  authentication, no dashboard) with 2 CPUs and 2 fake GPUs (Ray sets CUDA_VISIBLE_DEVICES
  per GPU task); every test that needs Ray shares it, so none starves another of resources
  or shuts it down under it. Yields the GCS address (`--address=` for driver processes)."""
  import ray
  from recast.jobs import launcher
  # Ray refuses fake GPUs while CUDA_VISIBLE_DEVICES (set to "" above) lists none.
  hidden = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
  try:
    launcher.connect_ray(num_cpus=2, num_gpus=2, log_to_driver=False)
  finally:
    if hidden is not None:
      os.environ["CUDA_VISIBLE_DEVICES"] = hidden
  yield ray.get_runtime_context().gcs_address
  ray.shutdown()
