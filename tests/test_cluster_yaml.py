"""cluster.yaml: valid for `ray up` by Ray's own schema (offline), and safe by construction."""

import copy
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture
def prepared():
    return prepare_config(copy.deepcopy(RAW))


def test_ray_schema_accepts_it(prepared):
    validate_config(prepared)  # the same checks `ray up` runs before launching anything


def test_the_schema_check_is_real():
    import jsonschema

    bad = copy.deepcopy(RAW)
    bad["available_node_types"]["rm_gpu"]["resources"]["GPU"] = 0.5  # resources must be integers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_docker_image_is_the_installed_ray():
    images = [RAW["docker"][k] for k in ("image", "head_image", "worker_image") if k in RAW["docker"]]
    images += [t["docker"]["worker_image"] for t in RAW["available_node_types"].values()
               if "worker_image" in t.get("docker", {})]
    assert images
    for image in images:
        assert image == f"rayproject/ray:{ray.__version__}-py311-gpu", image
        assert "ray-ml" not in image


def test_node_types_have_explicit_integer_resources_and_gpu_amis():
    types = RAW["available_node_types"]
    head = types[RAW["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["resources"]["CPU"] >= 1
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert {"rm_gpu", "rollout_gpu"} <= set(gpu_types)
    for name, t in types.items():
        assert {"CPU", "GPU"} <= set(t["resources"]), name
        assert all(isinstance(v, int) for v in t["resources"].values()), name
    for name in gpu_types:
        assert types[name]["node_config"]["ImageId"].startswith("ami-"), name
        assert types[name]["node_config"]["InstanceType"].startswith("g5."), name


def test_dashboard_is_not_open_to_the_internet(prepared):
    for rule in RAW["provider"].get("security_group", {}).get("IpPermissions", []):
        open_to_all = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        covers = lambda port: rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)  # noqa: E731
        assert not (open_to_all and any(covers(p) for p in (8265, 6379, 10001))), rule
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_setup_installs_warm_ray_with_vllm_and_token_auth_everywhere(prepared):
    setup = " ".join(RAW["setup_commands"])
    assert "warm-ray[vllm]" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in prepared[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    # the uploaded repository leaves the virtualenv and run outputs behind
    assert RAW["file_mounts"]["/home/ray/warm-ray"] == "."
    assert {".venv", "runs", ".git"} <= set(RAW["rsync_exclude"])
