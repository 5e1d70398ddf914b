"""deploy/k8s and deploy/kserve: every manifest is valid against the Kubernetes schemas
(kubernetes-validate, which bundles them: no network), and agrees with the application
and the image: ports, probe paths, LOSSD_* variable names, user id, grace periods."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lossd.service import Settings, create_app
from lossd.service.settings import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
K8S_VERSION = "1.30.0"  # oldest Kubernetes these manifests are meant for; all schemas are bundled

# Fields KServe's v1beta1 PredictorSpec adds around an inlined PodSpec (used here); the rest
# of spec.predictor must be a valid core/v1 PodSpec.
KSERVE_EXTENSIONS = {"minReplicas": int, "maxReplicas": int, "scaleMetric": str, "scaleTarget": int}
KSERVE_SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}


def _docs(folder: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _app_paths() -> set[str]:
    app = create_app(Settings(warmup=False))
    return {r.path for r in app.router.routes}


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _pod_specs() -> list[tuple[str, dict]]:
    specs = [(f"{n}:{d['kind']}", d["spec"]["template"]["spec"]) for n, d in _docs(K8S) if d["kind"] == "Deployment"]
    for n, d in _docs(KSERVE):
        pred = d["spec"]["predictor"]
        specs.append((f"{n}:{d['kind']}", {k: v for k, v in pred.items() if k not in KSERVE_EXTENSIONS}))
    return specs


def test_there_are_the_promised_manifests():
    kinds = {d["kind"] for _, d in _docs(K8S)}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert [d["kind"] for _, d in _docs(KSERVE)] == ["InferenceService"]


@pytest.mark.parametrize("name,doc", _docs(K8S), ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_k8s_manifest_is_valid_against_the_schema(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error


def test_kserve_inferenceservice_is_valid():
    (_, isvc), = _docs(KSERVE)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    assert set(isvc["spec"]) == {"predictor"}
    pred = isvc["spec"]["predictor"]
    for field, kind in KSERVE_EXTENSIONS.items():
        assert field not in pred or isinstance(pred[field], kind), field
    assert pred.get("scaleMetric", "cpu") in KSERVE_SCALE_METRICS
    # kubernetes-validate has no schema for KServe's CRD: the PodSpec KServe inlines in the
    # predictor is validated as what it is, a core/v1 Pod's spec
    pod_spec = {k: v for k, v in pred.items() if k not in KSERVE_EXTENSIONS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lossd"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    (container,) = pred["containers"]
    assert container["name"] == "kserve-container"  # the container KServe routes to


@pytest.mark.parametrize("where,spec", _pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_pod_spec_matches_the_application_and_image(where, spec):
    paths = _app_paths()
    dockerfile = _dockerfile()
    (container,) = spec["containers"]
    env = _env(container)
    fields = {ENV_PREFIX + f.upper() for f in Settings.model_fields}
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - fields
    assert not unknown, f"{where}: {unknown} are not settings ({sorted(fields)})"
    Settings.from_env(env)  # every value is a valid setting
    port = int(env.get("LOSSD_PORT", Settings.model_fields["port"].default))
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    served = [port] + ([int(env["LOSSD_GRPC_PORT"])] if "LOSSD_GRPC_PORT" in env else [])
    assert sorted(ports.values()) == sorted(served), \
        f"{where}: container ports {ports} but LOSSD_PORT={port}, LOSSD_GRPC_PORT={env.get('LOSSD_GRPC_PORT')}"
    assert env.get("LOSSD_HOST") == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, f"{where}: {probe} path {get['path']} is not a route"
        assert get["port"] in (port, *[n for n in ports if n]), f"{where}: {probe} port {get['port']}"
    assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/v2/health/ready")
    assert container["livenessProbe"]["httpGet"]["path"] in ("/healthz", "/v2/health/live")
    # security: non-root as the image's user, read-only root with /tmp (NUMBA_CACHE_DIR) writable
    user = re.search(r"^USER (\d+)", dockerfile, re.M).group(1)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cache_dir = re.search(r"NUMBA_CACHE_DIR=(\S+)", dockerfile).group(1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert any(cache_dir.startswith(p.rstrip("/") + "/") for p in mounts), (cache_dir, mounts)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all("emptyDir" in volumes[n] for n in mounts.values())
    # the kubelet waits preStop + the server's grace before SIGKILL
    grace = float(env.get("LOSSD_GRACEFUL_TIMEOUT", Settings.model_fields["graceful_timeout"].default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert spec["terminationGracePeriodSeconds"] > grace + sleep + 2
    assert container["resources"]["limits"]["cpu"] and container["resources"]["requests"]["memory"]


def test_service_hpa_and_pdb_point_at_the_deployment():
    docs = {d["kind"]: d for _, d in _docs(K8S)}
    dep = docs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= port_names
    ref = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB can then allow one down


def test_image_defaults_match_the_settings():
    dockerfile = _dockerfile()
    assert re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1) == str(Settings.model_fields["port"].default)
    assert "LOSSD_HOST=0.0.0.0" in dockerfile
    env_names = set(re.findall(r"\b(LOSSD_[A-Z_]+)=", dockerfile))
    assert env_names <= {ENV_PREFIX + f.upper() for f in Settings.model_fields}, env_names
    assert "/healthz" in re.search(r"^HEALTHCHECK.*(?:\n .*)*", dockerfile, re.M).group(0)
