"""ray_cluster.yaml is a valid Ray cluster launcher config (checked offline against the
autoscaler schema shipped in the ray wheel) with GPU workers, recast's setup and no secrets."""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster():
  return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema():
  return json.loads(SCHEMA.read_text())


def test_config_matches_the_autoscaler_schema(cluster, schema):
  jsonschema.validate(cluster, schema)
  broken = copy.deepcopy(cluster)
  broken["available_node_types"]["gpu_a10g_x1"]["resources"]["GPU"] = "one"
  with pytest.raises(jsonschema.ValidationError):
    jsonschema.validate(broken, schema)
  broken = dict(cluster, max_worker=3)  # a misspelt top-level key
  with pytest.raises(jsonschema.ValidationError, match="max_worker"):
    jsonschema.validate(broken, schema)


def test_head_plus_autoscaled_gpu_workers(cluster):
  types = cluster["available_node_types"]
  head = types[cluster["head_node_type"]]
  assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
  workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
  assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
  assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
  assert cluster["max_workers"] >= max(t["max_workers"] for t in workers.values())
  assert cluster["provider"]["type"] == "aws"


def test_setup_installs_recast_pinned_and_mounts_shared_storage(cluster):
  setup = " ; ".join(cluster["setup_commands"])
  assert "git clone" in setup and "pip install -q -c constraints.txt -e ." in setup
  assert any("jax[cuda12]" in c for c in cluster["worker_setup_commands"])
  assert any("mount -t nfs4" in c and "/mnt/shared" in c
             for c in cluster["initialization_commands"])
  start = " ".join(cluster["head_start_ray_commands"])
  assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
  assert "RAY_USAGE_STATS_ENABLED=0" in start


def test_nothing_secret_in_the_file():
  text = (REPO / "ray_cluster.yaml").read_text()
  assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # AWS access key ids
  assert not re.search(r"(?i)(secret|password|token)\s*[:=]", text)
  assert "PRIVATE KEY" not in text
  assert "ssh_private_key" not in yaml.safe_load(text)["auth"]
