"""deploy/: the Kubernetes manifests validate strictly, agree with each other and with the
Ray configuration they carry, and the Dockerfile builds every package."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CUSTOM = {"ray.io/v1"}  # custom resources: no schema in kubernetes-validate


def documents() -> list[dict]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def one(kind: str) -> dict:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def validate(tmp_path: Path, docs: list[dict]) -> subprocess.CompletedProcess:
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    # The kubernetes-validate command, run as a module of this interpreter.
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.32.0", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_core_kinds_pass_kubernetes_validate_strict(tmp_path):
    core = [d for d in documents() if d["apiVersion"] not in CUSTOM]
    assert {d["kind"] for d in core} == {"ConfigMap", "Deployment", "Service"}
    proc = validate(tmp_path, core)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(core)
    # --strict is what catches a misspelt field (a probe that silently never runs):
    deployment = one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert validate(tmp_path, [deployment]).returncode != 0


def test_the_configmap_is_deploy_ray_yaml_and_reaches_serve_with_config():
    config_map = one("ConfigMap")
    carried = yaml.safe_load(config_map["data"]["config.yaml"])
    assert carried == yaml.safe_load((ROOT / "deploy" / "ray.yaml").read_text())
    pod = one("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.name in config_map["data"]
    assert container["command"] + args[:1] == ["tessera", "serve"]
    assert args[args.index("--host") + 1] == "0.0.0.0"


def test_probes_ask_the_grpc_port_the_configuration_serves():
    carried = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])
    [container] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == carried["server"]["port"] and ports["metrics"] == carried["server"]["metrics_port"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert container["livenessProbe"]["tcpSocket"]["port"] in ("grpc", ports["grpc"])
    service = one("Service")
    assert service["spec"]["clusterIP"] == "None"  # DNS lists every pod: clients round_robin
    assert service["spec"]["selector"] == one("Deployment")["spec"]["selector"]["matchLabels"]


def test_raycluster_names_what_kuberay_v1_requires_and_what_the_ray_ops_need():
    cluster = one("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    [head_container] = head["template"]["spec"]["containers"]
    assert head_container["image"] and 10001 in {p["containerPort"] for p in head_container["ports"]}
    groups = cluster["spec"]["workerGroupSpecs"]
    for group in groups:
        assert group["groupName"] and group["template"]["spec"]["containers"][0]["image"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())

    carried = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])
    graph = carried["graph"]
    # The front ends reach the head through KubeRay's head Service, on the Ray Client port.
    assert graph["ray_address"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    # Every resource sample and decode ask for is advertised by the GPU group, with a GPU.
    for name in ("sample", "decode"):
        options = graph["ops"][name]["ray_actor_options"]
        assert graph["ops"][name]["mode"] == "ray" and options["resources"]
        fits = []
        for group in groups:
            advertised = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            fits.append(all(advertised.get(r, 0) >= n for r, n in options["resources"].items())
                        and int(limits.get("nvidia.com/gpu", 0)) >= options.get("num_gpus", 0))
        assert any(fits), f"no worker group can host {name}'s actors"
    images = {c["image"] for d in documents() if d["kind"] in ("Deployment", "RayCluster")
              for c in _containers(d)}
    assert len(images) == 1  # Ray Client needs one Ray and one Python on both sides


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    specs = [doc["spec"]["headGroupSpec"]] + doc["spec"]["workerGroupSpecs"]
    return [c for s in specs for c in s["template"]["spec"]["containers"]]


def test_the_dockerfile_copies_every_package_and_serves_the_mounted_config():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M))
    for project in (ROOT, ROOT / "clients"):  # the server's distribution and the client's
        package_dirs = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
        for folder in package_dirs.values():
            top = (project / folder).resolve().relative_to(ROOT).parts[0]
            assert top in copied, f"{project / folder} is installed but not copied into the image"
    assert "pip install --no-cache-dir ./clients '.[ray]'" in dockerfile
    assert 'ENTRYPOINT ["tessera"]' in dockerfile
    assert 'CMD ["serve", "--config", "/etc/tessera/config.yaml", "--host", "0.0.0.0"]' in dockerfile
    assert "torch==2.13.0" in dockerfile


def test_the_ray_configuration_loads():
    pytest.importorskip("ray", reason="mode: ray needs the ray extra: pip install -e ./clients -e '.[ray]'")
    from tessera.server.main import load_config
    config = load_config(str(ROOT / "deploy" / "ray.yaml"), None, None, None)
    assert config.graph.ray_address == "ray://tessera-ray-head-svc:10001"
    assert {name for name, op in config.graph.ops.items() if op.mode == "ray"} == {"sample", "decode"}
