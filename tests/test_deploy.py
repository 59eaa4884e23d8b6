"""deploy/: the container images, the compose file, the Kubernetes manifests and Envoy's configuration.

Everything here runs offline: the Kubernetes manifests are validated against
the Kubernetes OpenAPI schemas that kubernetes-validate bundles, the compose
files against the compose-spec JSON schema that check-jsonschema bundles, and
every moodstream command line in those files is parsed by moodstream's own
argument parser, so a renamed or mistyped flag fails here rather than in a
cluster. Images are not built and Envoy is not started (no Docker, no Envoy
binary offline); their files are checked for what they must contain.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import importlib.resources
import io
import json
import re
import shlex
import socket
import sys
import tomllib
import warnings
from concurrent import futures
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from moodstream.compose.cli import build_parser
from moodstream.user_files import PathOption
from moodstream.server.readiness import LIVENESS_SERVICE, READINESS_SERVICE
from moodstream.v1 import moodstream_pb2
from moodstream.wire import SESSION_ID_METADATA_KEY

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes the manifests are for (native grpc probes: 1.27; the
# preStop sleep action is on by default from 1.30) and the newest whose
# schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()))
SCREENING_SERVICE = moodstream_pb2.DESCRIPTOR.services_by_name["Screening"].full_name
# Extras that pull in torch (directly or through moodstream[model]).
TORCH_EXTRAS = {"model", "server", "onnx", "trainer", "eval", "dev", "test", "all"}

sys.path.insert(0, str(DEPLOY))
import grpc_health_check  # noqa: E402  (deploy/grpc_health_check.py, copied into the server image)
import pyproject_requirements  # noqa: E402  (deploy/pyproject_requirements.py, run by both images)


# ---------------------------------------------------------------- reading deploy files


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def k8s_objects() -> list[dict]:
    objects = []
    for path in manifest_files():
        objects.extend(document for document in yaml.safe_load_all(path.read_text()) if document)
    return objects


def k8s_object(kind: str, name: str) -> dict:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def container(workload: dict, name: str) -> dict:
    containers = {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}
    assert name in containers, f"{workload['metadata']['name']} has no container {name!r}"
    return containers[name]


def container_port(spec: dict, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
    assert name in ports, f"container {spec['name']} has no port named {name!r}"
    return ports[name]


def container_parser() -> argparse.ArgumentParser:
    """The CLI's parser with its path options taking any path: a manifest's paths exist inside its container
    (/models, mounted secrets), not on the machine that runs the test; every flag and other value is checked."""
    parser = build_parser()
    pending = [parser]
    while pending:
        for action in pending.pop()._actions:
            if isinstance(action.type, PathOption):
                action.type = str
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return parser


def parse_cli(argv: list[str], where: str):
    """Parse a moodstream command line exactly as the CLI would, failing on any unknown or abbreviated flag."""
    argv = [str(arg) for arg in argv]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = container_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `moodstream {shlex.join(argv)}` is refused by the CLI: {stderr.getvalue().strip()}")
    parser = build_parser()
    for word in argv:  # descend into `server`, `token create`, ...
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word not in choices:
            break
        parser = choices[word]
    known = set(parser._option_string_actions)
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--"):
            assert flag in known, f"{where}: `moodstream {argv[0]}` has no flag {flag} (abbreviations are not allowed)"
    return args


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with an empty environment."""
    def replace(match: re.Match) -> str:
        return match.group(3) or ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?](.*?))?\}", replace, value)


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def server_services(document: dict) -> dict[str, dict]:
    return {name: service for name, service in document["services"].items()
            if service.get("build", {}).get("dockerfile") == "deploy/server.Dockerfile"}


def volume_mounts(service: dict) -> list[dict]:
    """Compose volume entries in long form (short 'src:dst[:ro]' strings expanded)."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            kind = "bind" if parts[0].startswith((".", "/", "$")) else "volume"
            mounts.append({"type": kind, "source": parts[0], "target": parts[1],
                           "read_only": len(parts) > 2 and parts[2] == "ro"})
        else:
            mounts.append(entry)
    return mounts


def container_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        ports.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


class Dockerfile:
    """The instructions of a Dockerfile: line continuations joined, comments dropped, ARG defaults known."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instructions: list[tuple[str, str]] = []
        logical = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not logical and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                logical += stripped[:-1] + " "
                continue
            logical += stripped
            keyword, _, rest = logical.partition(" ")
            self.instructions.append((keyword.upper(), rest.strip()))
            logical = ""
        assert not logical, f"{path.name}: a line continuation runs off the end of the file"
        self.args = {}
        for keyword, rest in self.instructions:
            if keyword == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                self.args[name.strip()] = default.strip()

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"{self.path.name} has no {keyword}"
        return found[-1]

    def exec_form(self, keyword: str) -> list[str]:
        text = self.one(keyword)
        if keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3:].strip()
        value = json.loads(text)
        assert isinstance(value, list), f"{self.path.name}: {keyword} must use the exec (JSON) form"
        return value

    def env(self) -> dict[str, str]:
        values = {}
        for rest in self.all("ENV"):
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                values[name] = value
        return values

    def base_images(self) -> list[str]:
        images = []
        for rest in self.all("FROM"):
            image = rest.split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), image))
        return images

    def run_text(self) -> str:
        return "\n".join(self.all("RUN"))


SERVER_IMAGE = Dockerfile(DEPLOY / "server.Dockerfile")
AGENT_IMAGE = Dockerfile(DEPLOY / "agent.Dockerfile")


def installed_extras(image: Dockerfile) -> set[str]:
    """The extras an image installs: `pip install ... "/src[EXTRA]"` and `pyproject_requirements.py EXTRA`."""
    text = image.run_text()
    extras = set()
    for group in re.findall(r"/src\[([^\]]*)\]", text):
        extras.update(name.strip() for name in group.split(",") if name.strip())
    for line in re.findall(r"pyproject_requirements\.py([^>&|]*)", text):
        extras.update(word for word in line.split() if not word.startswith("-") and not word.endswith(".toml"))
    return extras


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_validates_against_the_kubernetes_schemas(path, version):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents, f"{path.name} holds no object"
    for document in documents:
        where = f"{path.name}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            at = "/".join(map(str, error.caught.absolute_path))
            pytest.fail(f"{where} is invalid for Kubernetes {version} at {at}: {error.caught.message}")


def test_the_kubernetes_validator_rejects_a_broken_manifest():
    deployment = copy.deepcopy(k8s_object("Deployment", "moodstream-server"))
    kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    misspelt = copy.deepcopy(deployment)
    probe = container(misspelt, "server")["readinessProbe"]
    probe["grcp"] = probe.pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError, match="grcp"):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_and_one_namespace():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {path.name for path in manifest_files()}
    namespace = kustomization["namespace"]
    assert k8s_object("Namespace", namespace)
    for obj in k8s_objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']} {obj['metadata']['name']}"
    images = {image["name"] for image in kustomization.get("images", [])}
    assert container(k8s_object("Deployment", "moodstream-server"), "server")["image"].split(":")[0] in images


def test_server_deployment_runs_the_real_cli_with_gpu_probes_and_limits():
    deployment = k8s_object("Deployment", "moodstream-server")
    pod = deployment["spec"]["template"]
    server = container(deployment, "server")
    args = parse_cli(server["args"], "k8s server-deployment.yaml")
    assert args.command == "server" and args.host == "0.0.0.0" and args.device.startswith("cuda")
    grpc_port, metrics_port = container_port(server, "grpc"), container_port(server, "metrics")
    assert args.port == grpc_port
    assert args.metrics_port == metrics_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"

    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = server[name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{name} must be a grpc probe"
        assert probe["grpc"]["port"] == grpc_port, name
    # Readiness follows Redis; liveness (and startup, which gates it) only that the server runs.
    assert server["readinessProbe"]["grpc"]["service"] == READINESS_SERVICE
    for name in ("startupProbe", "livenessProbe"):
        assert server[name]["grpc"].get("service", "") == LIVENESS_SERVICE, name

    resources = server["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"].get("nvidia.com/gpu", 1)) == 1
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind

    mounts = {m["name"]: m for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts) <= set(volumes)
    assert args.models and not args.checkpoint, "replicas switch versions together through a model folder"
    models = next(m for m in mounts.values() if m["mountPath"] == args.models)
    assert models.get("readOnly") is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert k8s_object("PersistentVolumeClaim", claim)
    tokens_dir, tokens_key = args.tokens.rsplit("/", 1)
    tokens_mount = next(m for m in mounts.values() if m["mountPath"] == tokens_dir)
    secret = k8s_object("Secret", volumes[tokens_mount["name"]]["secret"]["secretName"])
    assert tokens_key in secret["stringData"]

    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == SERVER_IMAGE.one("USER").split(":")[0]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in mounts.values()), "a read-only root needs a writable /tmp"

    env = {e["name"]: e for e in server["env"]}
    ref = env["REDIS_URL"]["valueFrom"]["configMapKeyRef"]
    redis_url = urlparse(k8s_object("ConfigMap", ref["name"])["data"][ref["key"]])
    redis_service = k8s_object("Service", redis_url.hostname)
    assert redis_url.port in [p["port"] for p in redis_service["spec"]["ports"]]


def test_service_hpa_and_pdb_select_the_server_deployment():
    deployment = k8s_object("Deployment", "moodstream-server")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    server = container(deployment, "server")

    service = k8s_object("Service", "moodstream-server")
    assert service["spec"]["clusterIP"] == "None", "headless, so an L7 balancer sees every replica"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    for port in ports.values():
        container_port(server, port["targetPort"])

    hpa = k8s_object("HorizontalPodAutoscaler", "moodstream-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "moodstream-server")
    from moodstream.server import metrics as server_metrics
    exported = {value._name for value in vars(server_metrics).values() if hasattr(value, "_name")}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            assert metric["pods"]["metric"]["name"] in exported, "the HPA scales on a metric the server exports"
        if metric["type"] == "Resource":
            assert metric["resource"]["name"] in server["resources"]["requests"], "utilization needs a request"

    pdb = k8s_object("PodDisruptionBudget", "moodstream-server")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a node drain must be able to proceed"
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def redis_config(text: str) -> dict[str, str]:
    config = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            config[name.lower()] = value.strip()
    return config


def test_redis_statefulset_keeps_an_fsynced_append_only_file_on_a_volume():
    statefulset = k8s_object("StatefulSet", "moodstream-redis")
    assert statefulset["spec"]["serviceName"] == "moodstream-redis"
    assert k8s_object("Service", "moodstream-redis")["spec"]["clusterIP"] == "None"
    valkey = container(statefulset, "valkey")
    mounts = {m["name"]: m["mountPath"] for m in valkey["volumeMounts"]}
    config_volume = next(v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    config_map = k8s_object("ConfigMap", config_volume["configMap"]["name"])
    (file_name, text), = config_map["data"].items()
    assert valkey["command"][-1] == f"{mounts['config']}/{file_name}"
    config = redis_config(text)
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "always", "a chunk is acknowledged once Redis replied: fsync before replying"
    assert config["maxmemory-policy"] == "noeviction", "session state must never be evicted"
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert config["dir"] == mounts[next(iter(claims & set(mounts)))], "the AOF directory is the persistent volume"


def test_k8s_envoy_balances_the_headless_server_service_with_grpc_health_checks():
    config = yaml.safe_load(k8s_object("ConfigMap", "moodstream-envoy")["data"]["envoy.yaml"])
    deployment = k8s_object("Deployment", "moodstream-server")
    namespace = deployment["metadata"]["namespace"]
    grpc_port = container_port(container(deployment, "server"), "grpc")
    listener_port, endpoints = check_envoy_config(config)
    assert endpoints == {(f"moodstream-server.{namespace}.svc.cluster.local", grpc_port)}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "keep the admin API in the pod"
    envoy = container(k8s_object("Deployment", "moodstream-envoy"), "envoy")
    assert container_port(envoy, "grpc") == listener_port
    front = k8s_object("Service", "moodstream-grpc")
    assert front["spec"]["selector"].items() <= \
        k8s_object("Deployment", "moodstream-envoy")["spec"]["template"]["metadata"]["labels"].items()
    assert compose()["services"]["envoy"]["image"] == envoy["image"]


def test_network_policies_open_the_ports_the_pods_listen_on():
    server = container(k8s_object("Deployment", "moodstream-server"), "server")
    valkey = container(k8s_object("StatefulSet", "moodstream-redis"), "valkey")
    server_policy = k8s_object("NetworkPolicy", "moodstream-server")
    opened = {port["port"] for rule in server_policy["spec"]["ingress"] for port in rule["ports"]}
    assert opened == {container_port(server, "grpc"), container_port(server, "metrics")}
    redis_policy = k8s_object("NetworkPolicy", "moodstream-redis")
    (rule,) = redis_policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [container_port(valkey, "redis")]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"


def test_placeholder_tokens_secret_is_a_valid_tokens_file_without_any_token(tmp_path):
    from moodstream.server.auth import load_tokens

    secret = k8s_object("Secret", "moodstream-tokens")
    path = tmp_path / "tokens.json"
    path.write_text(secret["stringData"]["tokens.json"])
    assert load_tokens(path) == {}, "the placeholder must grant nothing"


# ---------------------------------------------------------------- compose


def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_file_validates_against_the_compose_spec(name):
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = load_yaml(DEPLOY / name)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)


def test_the_compose_schema_rejects_a_broken_file():
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = compose()
    document["services"]["redis"]["helthcheck"] = document["services"]["redis"].pop("healthcheck")
    assert any("helthcheck" in error.message for error in validator.iter_errors(document))


MODELS_SETUP = "mkdir -p models && cp -r ../moodstream/assets/demo-checkpoint models/demo"


def test_compose_references_resolve():
    document = compose()
    services = document["services"]
    named_volumes = set(document.get("volumes") or {})
    secrets = set(document.get("secrets") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for mount in volume_mounts(service):
            if mount["type"] == "volume":
                assert mount["source"] in named_volumes, f"{name}: volume {mount['source']} is not declared"
            elif interpolate(mount["source"]) == "./models":
                # The model folder: made by the setup in the file's header from the bundled demo checkpoint,
                # never committed.
                assert all(MODELS_SETUP in (DEPLOY / f).read_text() for f in ("compose.yaml", "README.md"))
                assert (DEPLOY / "../moodstream/assets/demo-checkpoint/config.json").is_file()
                assert "models/" in (DEPLOY / ".gitignore").read_text().split()
            else:
                source = DEPLOY / interpolate(mount["source"])
                assert source.exists(), f"{name}: bind source {source} does not exist"
        for secret in service.get("secrets", []):
            assert (secret["source"] if isinstance(secret, dict) else secret) in secrets, name
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: images build from the repository root"
            assert (context / service["build"]["dockerfile"]).is_file(), name
    for name, secret in document["secrets"].items():
        assert Path(interpolate(secret["file"])).parent.as_posix() in ("secrets", "./secrets"), name
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split(), "the tokens file must never be committed"
    gpu = load_yaml(DEPLOY / "compose.gpu.yaml")
    assert set(gpu["services"]) == set(server_services(document)), "every server replica, and only those, gets a GPU"
    for service in gpu["services"].values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_runs_two_server_replicas_with_the_real_cli():
    document = compose()
    servers = server_services(document)
    assert len(servers) >= 2, "two scoring-server replicas behind the balancer"
    secret_names = {}
    for name, service in servers.items():
        args = parse_cli(service["command"], f"compose {name}")
        assert args.command == "server" and args.host == "0.0.0.0"
        assert str(args.port) in service["expose"] and str(args.metrics_port) in service["expose"]
        assert container_ports(service) <= {args.metrics_port}, f"{name}: only metrics are published; gRPC via Envoy"
        binds = {m["target"]: m for m in volume_mounts(service)}
        assert args.models and not args.checkpoint, "replicas switch versions together through a model folder"
        assert binds[args.models]["read_only"] is True
        (secret,) = service["secrets"]
        assert args.tokens == f"/run/secrets/{secret['target']}"
        secret_names[name] = secret["source"]
        redis_url = urlparse(service["environment"]["REDIS_URL"])
        assert redis_url.hostname in document["services"]
        assert service["depends_on"][redis_url.hostname]["condition"] == "service_healthy"
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[2] == SERVER_IMAGE.exec_form("HEALTHCHECK")[1]
        assert test[3] == f"127.0.0.1:{args.port}" and SCREENING_SERVICE in test
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert service["image"] == container(k8s_object("Deployment", "moodstream-server"), "server")["image"]
    published = [port for service in servers.values() for port in service.get("ports", [])]
    assert len(published) == len(set(str(p).rsplit(":", 1)[0] for p in published)), "host ports must differ"


def test_compose_redis_keeps_an_fsynced_append_only_file_on_a_volume():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2]))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "always", "a chunk is acknowledged once Redis replied: fsync before replying"
    assert options["--maxmemory-policy"] == "noeviction"
    data = next(m for m in volume_mounts(redis) if m["target"] == options["--dir"])
    assert data["type"] == "volume"
    assert "ping" in redis["healthcheck"]["test"]


def test_compose_agent_streams_through_envoy_with_the_real_cli():
    document = compose()
    agent = document["services"]["agent"]
    assert agent.get("profiles") == ["demo"], "the demo agent starts only when asked for"
    assert agent["build"]["dockerfile"] == "deploy/agent.Dockerfile"
    assert AGENT_IMAGE.exec_form("ENTRYPOINT") == ["moodstream", "agent"]
    args = parse_cli(["agent", *agent["command"]], "compose agent")
    servers = args.server if isinstance(args.server, list) else [args.server]
    (address,) = [address for value in servers for address in value.split(",")]
    host, port = address.rsplit(":", 1)
    assert host in document["services"] and document["services"][host]["image"].startswith("envoyproxy/envoy:")
    listener_port, _ = check_envoy_config(load_yaml(DEPLOY / "envoy.yaml"))
    assert int(port) == listener_port
    outbox = args.outbox or AGENT_IMAGE.env()["MOODSTREAM_OUTBOX"]
    assert outbox in [m["target"] for m in volume_mounts(agent) if m["type"] == "volume"]
    assert outbox in [path for line in AGENT_IMAGE.all("VOLUME") for path in json.loads(line)]
    assert "MOODSTREAM_TOKEN" in agent["environment"]


# ---------------------------------------------------------------- Envoy


def check_envoy_config(config: dict) -> tuple[int, set[tuple[str, int]]]:
    """Assert the gRPC essentials of an Envoy bootstrap; return its listener port and upstream endpoints."""
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    manager = hcm["typed_config"]
    assert manager["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    assert manager["codec_type"] in ("HTTP2", "AUTO")
    assert manager["stream_idle_timeout"] == "0s", "Subscribe may wait long between updates"
    routes = [route for host in manager["route_config"]["virtual_hosts"] for route in host["routes"]]
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    for route in routes:
        assert route["route"]["cluster"] in clusters
        assert route["route"]["timeout"] == "0s", "a proxy deadline would end long-lived streams"
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    endpoints = set()
    for cluster in clusters.values():
        assert cluster["lb_policy"] == "ROUND_ROBIN"
        assert cluster["type"] == "STRICT_DNS", "one upstream host per replica address"
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in options["explicit_http_config"], "gRPC needs HTTP/2 to the upstreams"
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"]["service_name"] == SCREENING_SERVICE
        assert cluster["load_assignment"]["cluster_name"] == cluster["name"]
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                endpoints.add((address["address"], address["port_value"]))
    return listener["address"]["socket_address"]["port_value"], endpoints


def envoy_bootstrap(config: dict):
    """Parse an Envoy bootstrap with Envoy's own API definitions (envoy-data-plane): unknown fields, wrong
    enum values, unknown typed_config types and deprecated fields are errors."""
    with warnings.catch_warnings():  # the generated classes trip pydantic's own deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    def type_urls(value):
        if isinstance(value, dict):
            if "@type" in value:
                yield value["@type"]
            for item in value.values():
                yield from type_urls(item)
        elif isinstance(value, list):
            for item in value:
                yield from type_urls(item)

    for url in set(type_urls(config)):  # each typed_config's message must be registered before parsing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("envoy_data_plane." + url.split("/", 1)[1].rsplit(".", 1)[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".* is deprecated$", category=DeprecationWarning)
        return Bootstrap.from_dict(config)


def envoy_configs() -> dict[str, dict]:
    return {"deploy/envoy.yaml": load_yaml(DEPLOY / "envoy.yaml"),
            "deploy/k8s/envoy.yaml": yaml.safe_load(k8s_object("ConfigMap", "moodstream-envoy")["data"]["envoy.yaml"])}


@pytest.mark.parametrize("name", ["deploy/envoy.yaml", "deploy/k8s/envoy.yaml"])
def test_envoy_config_parses_with_envoys_own_api_definitions(name):
    bootstrap = envoy_bootstrap(envoy_configs()[name])
    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.health_checks[0].grpc_health_check.service_name == SCREENING_SERVICE
    assert cluster.connect_timeout.total_seconds() > 0


@pytest.mark.parametrize("name", ["deploy/envoy.yaml", "deploy/k8s/envoy.yaml"])
def test_envoy_turns_browsers_grpc_web_into_grpc_with_cors(name):
    envoy_bootstrap(envoy_configs()[name])  # Envoy's own definitions accept the filters and the policy
    manager = envoy_configs()[name]["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    assert manager["codec_type"] == "AUTO", "browsers may send gRPC-web over HTTP/1.1"
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]
    (host,) = manager["route_config"]["virtual_hosts"]
    policy = host["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["@type"].endswith("cors.v3.CorsPolicy")
    allowed = {header.strip() for header in policy["allow_headers"].split(",")}
    assert {"authorization", "content-type", "x-grpc-web", SESSION_ID_METADATA_KEY} <= allowed
    assert "grpc-status" in policy["expose_headers"] and "POST" in policy["allow_methods"]
    assert all("grpc" not in route["match"] for route in host["routes"]), "a CORS preflight is not gRPC"


def test_envoys_api_definitions_reject_a_broken_config():
    config = envoy_configs()["deploy/envoy.yaml"]
    misspelt = copy.deepcopy(config)
    misspelt["static_resources"]["clusters"][0]["lb_polcy"] = misspelt["static_resources"]["clusters"][0]["lb_policy"]
    with pytest.raises(KeyError, match="lb_polcy"):
        envoy_bootstrap(misspelt)
    bad_enum = copy.deepcopy(config)
    bad_enum["static_resources"]["clusters"][0]["lb_policy"] = "ROUND_ROBBIN"
    with pytest.raises(ValueError, match="ROUND_ROBBIN"):
        envoy_bootstrap(bad_enum)
    deprecated = copy.deepcopy(config)
    deprecated["static_resources"]["clusters"][0]["dns_refresh_rate"] = "5s"
    with pytest.raises(DeprecationWarning, match="dns_refresh_rate is deprecated"):
        envoy_bootstrap(deprecated)
    nested = copy.deepcopy(config)
    manager = nested["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["codec_typ"] = manager.pop("codec_type")
    with pytest.raises(KeyError, match="codec_typ"):
        envoy_bootstrap(nested)


def test_compose_envoy_balances_every_server_replica():
    document = compose()
    config = load_yaml(DEPLOY / "envoy.yaml")
    listener_port, endpoints = check_envoy_config(config)
    expected = {(name, parse_cli(service["command"], name).port) for name, service in server_services(document).items()}
    assert endpoints == expected
    envoy = document["services"]["envoy"]
    assert listener_port in container_ports(envoy)
    (config_mount,) = [m for m in volume_mounts(envoy) if m["type"] == "bind"]
    assert (DEPLOY / config_mount["source"]).resolve() == DEPLOY / "envoy.yaml"
    assert envoy["command"][envoy["command"].index("--config-path") + 1] == config_mount["target"]
    assert set(envoy["depends_on"]) == set(server_services(document))


# ---------------------------------------------------------------- images


def test_base_images_are_pinned():
    for image in (SERVER_IMAGE, AGENT_IMAGE):
        for reference in image.base_images():
            name, _, tag = reference.partition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image.path.name}: {reference} unpinned"
    (server_base,) = SERVER_IMAGE.base_images()
    assert server_base.startswith("nvidia/cuda:"), "the server image runs on CUDA"
    (agent_base,) = AGENT_IMAGE.base_images()
    assert re.fullmatch(r"python:3\.1[1-3]\.\d+-slim(-\w+)?", agent_base), agent_base
    for service in (*compose()["services"].values(), *(c for o in k8s_objects()
                                                       if o["kind"] in ("Deployment", "StatefulSet")
                                                       for c in o["spec"]["template"]["spec"]["containers"])):
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), image


def test_images_install_extras_that_exist_and_the_agent_never_torch():
    extras = set(pyproject()["project"]["optional-dependencies"])
    server_extras, agent_extras = installed_extras(SERVER_IMAGE), installed_extras(AGENT_IMAGE)
    assert server_extras == {"server"}
    assert agent_extras == {"agent"}
    assert server_extras <= extras and agent_extras <= extras
    assert not agent_extras & TORCH_EXTRAS
    installs = re.findall(r"pip install ([^&|;]*)", AGENT_IMAGE.run_text())
    assert len(installs) == 2 and not any("torch" in line.lower() for line in installs), installs
    assert "import moodstream.agent" in AGENT_IMAGE.run_text(), "the image build proves the agent imports without torch"


def requirement_closure(requirements: list[str]) -> set[str]:
    """Names of every distribution these requirements pull in, following the installed packages' metadata."""
    seen: set[str] = set()
    pending = [Requirement(line) for line in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in needs:
            nested = Requirement(line)
            if nested.marker is None or nested.marker.evaluate({"extra": ""}) or any(
                    nested.marker.evaluate({"extra": extra}) for extra in requirement.extras):
                pending.append(nested)
    return seen


def test_agent_requirements_never_reach_torch():
    document = pyproject()
    agent = pyproject_requirements.requirements(document, sorted(installed_extras(AGENT_IMAGE)))
    server = pyproject_requirements.requirements(document, sorted(installed_extras(SERVER_IMAGE)))
    assert any(Requirement(line).name == "torch" for line in server), "the server image does install torch"
    closure = requirement_closure(agent)
    assert {"grpcio", "numpy", "webrtcvad-wheels"} <= closure
    assert not closure & {"torch", "transformers", "torchaudio"}, sorted(closure)
    assert "torch" in requirement_closure(server)


def test_requirements_script_expands_moodstream_extras_and_refuses_unknown_ones(capsys):
    document = pyproject()
    lines = pyproject_requirements.requirements(document, ["server"])
    assert lines[:len(document["project"]["dependencies"])] == document["project"]["dependencies"]
    assert not any(line.startswith("moodstream") for line in lines)
    for requirement in document["project"]["optional-dependencies"]["model"]:
        assert requirement in lines
    assert pyproject_requirements.main(["no-such-extra", "--pyproject", str(ROOT / "pyproject.toml")]) == 2
    assert "no extra 'no-such-extra'" in capsys.readouterr().err


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if path == pattern or path.startswith(pattern.rstrip("/") + "/") or fnmatch.fnmatch(path, pattern) \
                or fnmatch.fnmatch(Path(path).name, bare):
            return True
    return False


@pytest.mark.parametrize("image", [SERVER_IMAGE, AGENT_IMAGE], ids=lambda image: image.path.name)
def test_image_copies_what_the_build_needs_and_the_context_keeps_it(image):
    patterns = dockerignore_patterns()
    assert ".venv" in patterns and ".git" in patterns
    copied = set()
    for rest in image.all("COPY"):
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{image.path.name}: COPY {source} does not exist"
            assert not ignored(source, patterns), f"{image.path.name}: .dockerignore drops {source}"
            copied.add(source)
    package_dirs = {folder.split("/")[0] for folder in pyproject()["tool"]["setuptools"]["package-dir"].values()}
    assert package_dirs | {"pyproject.toml", "README.md"} <= copied, "setuptools needs every package folder"
    assert ignored("moodstream/__pycache__", patterns)
    assert not ignored("moodstream/assets/demo-checkpoint", patterns)


def test_server_image_command_healthcheck_user_and_ports_agree():
    command = SERVER_IMAGE.exec_form("ENTRYPOINT") + SERVER_IMAGE.exec_form("CMD")
    assert command[0] == "moodstream"
    args = parse_cli(command[1:], "server.Dockerfile CMD")
    exposed = {int(port) for line in SERVER_IMAGE.all("EXPOSE") for port in line.split()}
    assert {args.port, args.metrics_port} == exposed
    check = SERVER_IMAGE.exec_form("HEALTHCHECK")
    assert check[1] == "/opt/moodstream/grpc_health_check.py"
    assert check[2] == f"127.0.0.1:{args.port}" and check[check.index("--service") + 1] == SCREENING_SERVICE
    assert any(rest.split()[0] == "deploy/grpc_health_check.py" and rest.split()[1] == check[1]
               for rest in SERVER_IMAGE.all("COPY"))
    volumes = [path for line in SERVER_IMAGE.all("VOLUME") for path in json.loads(line)]
    assert args.models in volumes and not args.checkpoint
    assert args.tokens.startswith("/run/secrets/")
    for image in (SERVER_IMAGE, AGENT_IMAGE):
        user = image.one("USER").split(":")[0]
        assert user.isdigit() and int(user) >= 1000, f"{image.path.name} must run as a non-root uid"


IMAGE_ENTRYPOINTS = (("moodstream-server:", ["moodstream"]), ("moodstream-agent:", ["moodstream", "agent"]))


def documented_command_lines() -> list[tuple[str, list[str]]]:
    """`moodstream ...` command lines in deploy/: README code blocks, and comments of the other files."""
    parser = build_parser()
    subcommands = set(next(a for a in parser._actions if a.dest == "command").choices)
    found = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in (".md", ".yaml", ".Dockerfile", ".py"):
            continue
        lines, in_code = [], False
        for line in path.read_text().splitlines():
            if path.suffix == ".md":
                if line.startswith("```"):
                    in_code = not in_code
                    continue
                if in_code:
                    lines.append(line)
            elif line.lstrip().startswith("#"):
                lines.append(line.lstrip().lstrip("#"))
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in joined.splitlines():
            for segment in re.split(r"&&|\|\||;|\|", line.split(" # ")[0]):
                words = segment.split()
                # docker run ... IMAGE ARGS: the images' entrypoints are `moodstream` and `moodstream agent`
                for image, entrypoint in IMAGE_ENTRYPOINTS:
                    tagged = [word for word in words if word.startswith(image)]
                    if words[:2] == ["docker", "run"] and tagged and words.index(tagged[0]) + 1 < len(words):
                        words = [*entrypoint, *words[words.index(tagged[0]) + 1:]]
                if len(words) > 1 and words[0] == "moodstream" and words[1] in subcommands:
                    found.append((f"{path.relative_to(ROOT)}: {segment.strip()}", shlex.split(" ".join(words[1:]))))
    return found


def test_every_documented_moodstream_command_line_parses():
    commands = documented_command_lines()
    assert len(commands) >= 5, commands
    for where, argv in commands:
        parse_cli(argv, where)


# ---------------------------------------------------------------- the health check script


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_health_check_script_reports_serving_and_everything_else(health_server, capsys):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SCREENING_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    assert grpc_health_check.main([address, "--service", SCREENING_SERVICE]) == 0
    assert grpc_health_check.main([address]) == 0
    servicer.set(SCREENING_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert grpc_health_check.main([address, "--service", SCREENING_SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert grpc_health_check.main([address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    servicer.enter_graceful_shutdown()
    assert grpc_health_check.main([address]) == 1


def test_health_check_script_fails_when_nothing_listens(capsys):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert grpc_health_check.main([f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
