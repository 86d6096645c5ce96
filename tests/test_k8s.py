"""The Kubernetes manifests: `deploy/k8s` (GPU base) and `deploy/k8s-dev` (CPU overlay), rendered with
`kubectl kustomize` exactly as `kubectl apply -k` would, validated offline against the Kubernetes API schemas in
strict mode, and checked against what the service needs (GPU, probes, shutdown, security, wiring between objects).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipeline import ModelSettings
from serving.settings import ServingSettings, environment_knobs

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = {"base": ROOT / "deploy" / "k8s", "dev": ROOT / "deploy" / "k8s-dev"}
# Schemas kubernetes-validate ships; a version current clusters run (and the oldest with everything used here GA).
KUBERNETES_VERSION = "1.33"
APP_LABELS = {"app.kubernetes.io/name": "picturebook"}
GPU = "nvidia.com/gpu"
PORT = 8000


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so the kustomizations cannot be rendered")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


class Rendered:
    """One rendered kustomization, with the objects and the parts of them the checks look at."""

    def __init__(self, name: str, objects: list[dict]):
        self.name = name
        self.objects = objects

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str = "picturebook") -> dict:
        """The object of this kind; where there are several (the dev overlay's Redis), the one with this name."""
        found = self.all(kind)
        if len(found) > 1:
            found = [o for o in found if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict:
        return self.deployment["spec"]["template"]["metadata"].get("labels", {})

    @property
    def container(self) -> dict:
        containers = self.pod["containers"]
        assert [c["name"] for c in containers] == ["picturebook"], "one container, named picturebook"
        return containers[0]

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap").get("data", {})


@pytest.fixture(scope="module")
def base() -> Rendered:
    return Rendered("base", kustomize(OVERLAYS["base"]))


@pytest.fixture(scope="module")
def dev() -> Rendered:
    return Rendered("dev", kustomize(OVERLAYS["dev"]))


@pytest.fixture(params=["base", "dev"])
def rendered(request) -> Rendered:
    """Each check that holds for every environment runs on both renders: the overlay must not break the base."""
    return request.getfixturevalue(request.param)


# --- helpers ------------------------------------------------------------------------------------------------------

QUANTITY_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("4", "500m", "16Gi") as a number, so requests and limits compare."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in QUANTITY_SUFFIXES, f"not a quantity: {value!r}"
    return Decimal(match.group(1)) * Decimal(QUANTITY_SUFFIXES[match.group(2)])


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches a set of labels."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False  # an empty selector matches every pod in the namespace: never what is meant here
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def container_port(container: dict, port: int | str) -> int:
    """The number a probe's or a Service's port refers to: itself, or the container port with that name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return named[0]


def prestop_seconds(container: dict) -> int:
    prestop = container.get("lifecycle", {}).get("preStop")
    assert prestop, "a preStop delay keeps the pod serving while its endpoint removal propagates"
    if "sleep" in prestop:
        return int(prestop["sleep"]["seconds"])
    command = " ".join(prestop["exec"]["command"])
    match = re.search(r"\bsleep\s+(\d+)\b", command)
    assert match, f"preStop does not sleep: {command!r}"
    return int(match.group(1))


def probe_budget(probe: dict) -> int:
    """Longest a probe tolerates failing before it gives up (Kubernetes defaults: period 10 s, threshold 3)."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


# --- the objects, and valid Kubernetes ----------------------------------------------------------------------------


def test_renders_the_expected_objects_and_no_secret(rendered):
    kinds = sorted(o["kind"] for o in rendered.objects)
    redis = ["Deployment", "Service"] if rendered.name == "dev" else []  # the dev overlay's own Redis
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", *redis]
    )
    assert rendered.one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert rendered.one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_every_object_is_valid_kubernetes_in_strict_mode(rendered):
    errors = []
    for obj in rendered.objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),  # misspelt field
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="180"),  # wrong type
    ],
    ids=["unknown-field", "wrong-type"],
)
def test_strict_validation_catches_what_kubectl_kustomize_lets_through(base, mutate):
    # The validity check above is only worth something if the validator rejects a broken Deployment.
    broken = copy.deepcopy(base.deployment)
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_object_carries_the_app_label(rendered):
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert APP_LABELS.items() <= labels.items(), f"{obj['kind']} lacks {APP_LABELS}"
    assert APP_LABELS.items() <= rendered.pod_labels.items()


# --- the image and its configuration ------------------------------------------------------------------------------


def test_images(base, dev):
    assert base.container["image"] == "picturebook:latest"
    # The profile is fixed when the bento is built: the tiny overlay runs the image of a tiny bento.
    assert dev.container["image"] == "picturebook:tiny"


def test_the_image_is_set_through_the_kustomize_images_entry(tmp_path):
    # What `kustomize edit set image picturebook=registry.example.com/team/picturebook:1.2.3` does to a copy of
    # the base (it rewrites the entry named picturebook): the new image must reach the container.
    copy_of_base = tmp_path / "k8s"
    shutil.copytree(OVERLAYS["base"], copy_of_base)
    kustomization = yaml.safe_load((copy_of_base / "kustomization.yaml").read_text())
    [entry] = [i for i in kustomization.get("images", []) if i["name"] == "picturebook"]
    entry.update(newName="registry.example.com/team/picturebook", newTag="1.2.3")
    (copy_of_base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    moved = Rendered("set-image", kustomize(copy_of_base))
    assert moved.container["image"] == "registry.example.com/team/picturebook:1.2.3"


def test_the_configmap_is_what_the_container_reads_and_the_service_accepts(rendered, monkeypatch):
    config_name = rendered.one("ConfigMap")["metadata"]["name"]
    referenced = [s["configMapRef"]["name"] for s in rendered.container.get("envFrom", []) if "configMapRef" in s]
    assert referenced == [config_name], "the container must take its environment from the rendered ConfigMap"

    config = rendered.config
    knobs = set(environment_knobs())
    assert {k for k in config if k.startswith("PICTUREBOOK_")} <= knobs, "a misspelt knob would be silently ignored"
    assert config["HF_HUB_OFFLINE"] == "1"
    assert "PICTUREBOOK_API_KEY" not in config, "the key comes from a Secret, never a ConfigMap"

    for key in list(knobs):
        monkeypatch.delenv(key, raising=False)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    # The service's own parsing: a value it would refuse at start-up fails here.
    settings = ServingSettings()
    assert ModelSettings().profile.value == {"base": "sdxl", "dev": "tiny"}[rendered.name]
    assert (settings.max_batch_size, settings.max_latency_ms) == (4, 60000)
    assert (settings.request_timeout_s, settings.max_concurrency) == (120, 16)
    assert settings.port == PORT == container_port(rendered.container, "http")


def test_api_key_comes_from_an_optional_secret(rendered):
    [entry] = [e for e in rendered.container.get("env", []) if e["name"] == "PICTUREBOOK_API_KEY"]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True, "the pod must start without the Secret (the key is optional)"
    assert ref["name"] and ref["key"]
    assert rendered.all("Secret") == []


def test_the_base_takes_the_redis_url_from_a_required_secret(base):
    """Books are shared through Redis (issue 24): a pod without the Secret does not start (rather than keep books of
    its own, lost at its restart and unseen by the other replicas)."""
    [entry] = [e for e in base.container["env"] if e["name"] == "PICTUREBOOK_REDIS_URL"]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "picturebook-redis" and ref["key"] == "url" and not ref.get("optional", False)
    assert "PICTUREBOOK_REDIS_URL" in environment_knobs() and "PICTUREBOOK_REDIS_URL" not in base.config


def test_the_dev_overlay_runs_one_redis_the_pods_reach_and_nothing_else_selects(dev):
    redis = dev.one("Deployment", "picturebook-redis")
    assert redis["spec"]["replicas"] == 1
    redis_pod = redis["spec"]["template"]["metadata"]["labels"]
    service = dev.one("Service", "picturebook-redis")
    assert selects({"matchLabels": service["spec"]["selector"]}, redis_pod)
    [entry] = [e for e in dev.container["env"] if e["name"] == "PICTUREBOOK_REDIS_URL"]
    port = service["spec"]["ports"][0]["port"]
    assert entry == {"name": "PICTUREBOOK_REDIS_URL", "value": f"redis://picturebook-redis:{port}/0"}
    # The picturebook Service and PodDisruptionBudget must not take the Redis pod for a picturebook replica.
    assert not selects({"matchLabels": dev.one("Service")["spec"]["selector"]}, redis_pod)
    assert not selects(dev.one("PodDisruptionBudget")["spec"]["selector"], redis_pod)
    assert dev.all("Secret") == []


def test_service_links_cannot_override_the_port_setting(rendered):
    # With service links, the Service `picturebook` injects PICTUREBOOK_PORT=tcp://<ip>:80 into the pod, which
    # the service's settings read as its port (env prefix PICTUREBOOK_) and reject.
    service_env = rendered.one("Service")["metadata"]["name"].upper().replace("-", "_") + "_PORT"
    assert service_env in environment_knobs()
    assert rendered.pod.get("enableServiceLinks") is False


# --- GPU and resources --------------------------------------------------------------------------------------------


def test_base_asks_for_one_gpu_on_a_gpu_node(base):
    resources = base.container["resources"]
    assert quantity(resources["requests"][GPU]) == 1
    assert quantity(resources["limits"][GPU]) == 1
    assert base.pod["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert any(
        t.get("key") == GPU and t.get("effect") == "NoSchedule" and t.get("operator", "Equal") in ("Exists", "Equal")
        for t in base.pod.get("tolerations", [])
    ), "GPU nodes are tainted nvidia.com/gpu:NoSchedule"


def test_dev_needs_no_gpu(dev):
    resources = dev.container["resources"]
    assert GPU not in resources.get("requests", {}) and GPU not in resources.get("limits", {})
    assert not dev.pod.get("nodeSelector") and not dev.pod.get("tolerations")
    assert "nvidia" not in yaml.safe_dump(dev.deployment), "nothing may tie the dev pod to GPU nodes"


@pytest.mark.parametrize(
    "name, requests, limits",
    [("base", {"cpu": "4", "memory": "16Gi"}, {"memory": "24Gi"}), ("dev", {"memory": "2Gi"}, {"memory": "4Gi"})],
)
def test_memory_and_cpu(request, name, requests, limits):
    resources = request.getfixturevalue(name).container["resources"]
    for kind, wanted in (("requests", requests), ("limits", limits)):
        for resource, value in wanted.items():
            assert quantity(resources[kind][resource]) == quantity(value), f"{kind}.{resource}"


def test_requests_fit_within_limits(rendered):
    resources = rendered.container["resources"]
    assert quantity(resources["requests"]["memory"]) > 0 and quantity(resources["requests"]["cpu"]) > 0
    for resource, limit in resources.get("limits", {}).items():
        assert quantity(resources["requests"].get(resource, limit)) <= quantity(limit), resource


# --- probes and shutdown ------------------------------------------------------------------------------------------


def test_container_listens_on_8000_named_http(rendered):
    assert {"name": "http", "containerPort": PORT} in [
        {k: p.get(k) for k in ("name", "containerPort")} for p in rendered.container["ports"]
    ]


@pytest.mark.parametrize(
    "probe, path", [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]
)
def test_probe_paths_and_port(rendered, probe, path):
    get = rendered.container[probe]["httpGet"]
    assert get["path"] == path
    assert container_port(rendered.container, get["port"]) == PORT
    assert get.get("scheme", "HTTP") == "HTTP"


def test_startup_probe_allows_ten_minutes_for_the_model_load(base):
    assert probe_budget(base.container["startupProbe"]) >= 600


def test_dev_startup_probe_is_shorter_but_outlasts_a_tiny_load(dev):
    # The tiny profile was ready about 15 s after `bentoml serve` started; a slow dev node gets a few times that.
    assert 60 <= probe_budget(dev.container["startupProbe"]) < 600


def test_grace_period_outlasts_prestop_plus_the_longest_request(rendered):
    timeout = int(rendered.config["PICTUREBOOK_REQUEST_TIMEOUT_S"])
    grace = rendered.pod["terminationGracePeriodSeconds"]
    assert grace > timeout + prestop_seconds(rendered.container)


# --- security -----------------------------------------------------------------------------------------------------


def test_runs_non_root_without_privileges(rendered):
    pod, container = rendered.pod.get("securityContext", {}), rendered.container.get("securityContext", {})
    effective = pod | container  # the container's settings override the pod's
    assert effective.get("runAsNonRoot") is True
    assert isinstance(effective.get("runAsUser"), int) and effective["runAsUser"] > 0
    assert container.get("allowPrivilegeEscalation") is False
    assert container.get("privileged", False) is False
    assert "ALL" in container.get("capabilities", {}).get("drop", [])
    assert not container.get("capabilities", {}).get("add")
    assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert rendered.pod.get("automountServiceAccountToken") is False
    assert not rendered.pod.get("hostNetwork") and not rendered.pod.get("hostPID") and not rendered.pod.get("hostIPC")


# --- wiring between the objects -----------------------------------------------------------------------------------


def test_deployment_selects_its_own_pods(rendered):
    assert selects(rendered.deployment["spec"]["selector"], rendered.pod_labels)


def test_service_selects_the_pods_and_targets_the_named_port(rendered):
    service = rendered.one("Service")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert selects({"matchLabels": service["selector"]}, rendered.pod_labels)
    [port] = service["ports"]
    assert port["port"] == 80 and port.get("protocol", "TCP") == "TCP"
    assert isinstance(port["targetPort"], str), "target the container port by name"
    assert container_port(rendered.container, port["targetPort"]) == PORT


def test_autoscaler_drives_the_deployment(rendered):
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    deployment = rendered.deployment
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["scaleTargetRef"] == target
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert "replicas" not in deployment["spec"], "a fixed replica count would fight the autoscaler on every apply"
    for metric in hpa["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["target"]["type"] == "Utilization":
            # Utilisation is measured against requests: without one the autoscaler cannot compute it.
            assert metric["resource"]["name"] in rendered.container["resources"]["requests"]


def test_disruption_budget_covers_the_pods_and_lets_nodes_drain(rendered):
    pdb = rendered.one("PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"], rendered.pod_labels)
    assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb), "exactly one of minAvailable, maxUnavailable"
    # At the autoscaler's floor a drain must still be able to evict a pod, or node maintenance blocks forever.
    floor = rendered.one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    allowed = pdb["maxUnavailable"] if "maxUnavailable" in pdb else floor - pdb["minAvailable"]
    assert isinstance(allowed, int) and allowed >= 1


def test_the_kubectl_only_way_to_set_the_image_renders_it(tmp_path):
    """deploy/README.md's commands for a machine without the `kustomize` binary, run as written on a copy of the
    base (kubectl only, offline; the `kubectl apply` line needs a cluster and is left out)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    readme = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n```", readme, re.S)
    [script] = [block for block in blocks if "kubectl kustomize deploy/prod" in block]
    assert "kustomize edit" not in script
    *commands, apply = script.splitlines()
    assert apply == "kubectl apply -k deploy/prod"
    shutil.copytree(OVERLAYS["base"], tmp_path / "deploy" / "k8s")
    run = subprocess.run(["bash", "-c", "\n".join(commands)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["image:", "registry.example.com/picturebook:1.0"]
    prod = Rendered("prod", kustomize(tmp_path / "deploy" / "prod"))
    assert prod.container["image"] == "registry.example.com/picturebook:1.0"
    # Only the image changed: the base's objects, by kind and name (the ConfigMap's hash included).
    base = Rendered("base", kustomize(OVERLAYS["base"]))
    names = lambda rendered: sorted((o["kind"], o["metadata"]["name"]) for o in rendered.objects)  # noqa: E731
    assert names(prod) == names(base)
