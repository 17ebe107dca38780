"""The Helm charts, checked the way an SRE meets them: by Helm's own engine, then by Kubernetes' schemas.

Helm runs in-process through helm-python-sdk (``helm_python``), which binds ``libhelm_c``, the C ABI over Helm
v4's Go SDK: lint, values-schema validation and template rendering are Helm's real code, offline, with no
``helm`` binary. Every rendered manifest is then validated against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: unknown fields are errors, as ``kubectl apply --validate=strict`` would say).

Beyond "it renders", the tests pin what an operator relies on: probes hit the endpoints the processes serve,
signing keys and passwords only ever arrive through Secrets, the autoscaler and disruption budget point at the
pods they mean to, bad values are refused with a message naming them, and the environment a chart writes is
accepted by the process's own settings loader. The last test runs the chart's own command lines (control plane
on chdb, then an edge) against a real nats-server and waits for both readiness probes to pass.
"""

from __future__ import annotations

import base64
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml

from adserver.processes import Proc, ProcessGroup, free_port, start_nats, wait_ready
from control_plane import settings as cp_settings
from control_plane.settings import ControlPlaneSettings
from control_plane.state import check_topology
from control_plane.storage import parse_store_url
from edge import settings as edge_settings
from edge.settings import EdgeSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "helm"
MULTIREGION = HELM_DIR / "values-multiregion"
CHARTS = ("edge", "control-plane", "collector")
# A recent Kubernetes release kubernetes-validate ships schemas for, and the oldest the charts claim to support
# (kubeVersion in each Chart.yaml): every manifest must be valid for both.
KUBE_VERSION = "1.34.0"
KUBE_FLOOR = "1.25.0"

# Stand-ins for the Secrets the multi-region values expect an operator to create beforehand.
SIGNING_KEYS = "k2:" + base64.b64encode(bytes(range(32))).decode() + ",k1:" + base64.b64encode(b"x" * 32).decode()
EXISTING_SECRETS = {
    "adserver-signing-keys": {"signing-keys": SIGNING_KEYS},
    "clickhouse-credentials": {"clickhouse-password": "s3cret-pw"},
    "adserver-admin": {"admin-token": "admin-token-from-secret"},
}
# The settings the processes read besides their Spec tables (adserver.cli reads the log level itself).
KNOWN_ENV = (
    {edge_settings.PREFIX + s.name for s in edge_settings.SPECS}
    | {cp_settings.PREFIX + s.name for s in cp_settings.SPECS}
    | {"ADSERVER_LOG_LEVEL"}
)


@dataclass(frozen=True)
class Case:
    """One `helm template` invocation: a chart, its release and namespace, and the -f files in order."""

    chart: str
    release: str
    namespace: str
    files: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.chart}[{'+'.join(self.files) or 'defaults'}]"


DEFAULT_CASES = [
    Case("edge", "edge-eu", "ads"),
    Case("control-plane", "adserver", "ads"),
    Case("collector", "adserver", "ads"),
]
MULTIREGION_CASES = [
    Case("control-plane", "adserver", "adserver", ("central.yaml", "central-control-plane.yaml")),
    Case("collector", "adserver-collector", "adserver", ("central.yaml", "central-collector.yaml")),
    # central.yaml alone must also make sense for both charts: it is the shared base.
    Case("control-plane", "adserver", "adserver", ("central.yaml",)),
    Case("collector", "adserver-collector", "adserver", ("central.yaml",)),
    Case("edge", "edge-eu", "eu", ("region-eu.yaml",)),
    Case("edge", "edge-us", "us", ("region-us.yaml",)),
]
ALL_CASES = DEFAULT_CASES + MULTIREGION_CASES
EDGE_CASES = [c for c in ALL_CASES if c.chart == "edge"]


# --- Helm's engine --------------------------------------------------------------------------------------------


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's -f layering (cli/values mergeMaps): maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def values_for(case: Case, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in case.files:
        # Helm's own YAML reader, so the files are read exactly as `helm install -f` reads them.
        values = merge_values(values, helm.values_from_yaml((MULTIREGION / name).read_text()))
    return merge_values(values, extra or {})


def render(case: Case, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render like `helm template` and return the Kubernetes objects (NOTES.txt and empty templates dropped)."""
    with helm.Chart.load(HELM_DIR / case.chart) as chart:
        manifests = chart.render(values_for(case, extra), name=case.release, namespace=case.namespace,
                                 is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def rendered_text(case: Case, extra: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(HELM_DIR / case.chart) as chart:
        return chart.render(values_for(case, extra), name=case.release, namespace=case.namespace)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_entry(ctr: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [e for e in ctr["env"] if e["name"] == name]
    assert len(matches) == 1, f"{name} set {len(matches)} times"
    return matches[0]


# --- Kubernetes semantics the tests need ------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' dependent-variable expansion: $(NAME) of an earlier variable, $$ for a literal $."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return defined.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def secrets_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out = {name: dict(data) for name, data in EXISTING_SECRETS.items()}
    for d in docs:
        if d["kind"] == "Secret":
            out[d["metadata"]["name"]] = {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
    return out


def pod_env(docs: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    """The environment the kubelet would give the container: literals, Secret refs, the downward API."""
    secrets = secrets_of(docs)
    env: dict[str, str] = {}
    for item in container(one(docs, "Deployment"))["env"]:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] in secrets, f"{name} refers to Secret {ref['name']!r}, which nothing creates"
            assert ref["key"] in secrets[ref["name"]], f"{name}: Secret {ref['name']!r} has no key {ref['key']!r}"
            env[name] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[name] = pod_name
        else:
            raise AssertionError(f"{name}: unexpected valueFrom {source}")
    return env


# --- lint, render, validate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_helm_lint_passes_strictly(case: Case) -> None:
    report = helm.lint(HELM_DIR / case.chart, values_for(case), strict=True, kube_version=f"v{KUBE_VERSION}")
    # Severity 1 is informational ("icon is recommended"); warnings fail strict lint like errors do.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


def test_lint_reports_a_schema_violation() -> None:
    """The lint above can fail: a value of the wrong type is an error in lint's own report."""
    report = helm.lint(HELM_DIR / "edge", {"replicaCount": "two"}, strict=True)
    assert any("/replicaCount" in e and "want integer" in e for e in report["errors"]), report


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_rendered_manifests_validate_against_kubernetes_schemas(case: Case) -> None:
    docs = render(case)
    expected = {
        "edge": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount"},
        "control-plane": {"Deployment", "Service", "ServiceAccount"},
        "collector": {"Deployment", "ServiceAccount"},
    }[case.chart]
    assert expected <= set(kinds(docs)), kinds(docs)
    with helm.Chart.load(HELM_DIR / case.chart) as chart:
        assert chart.metadata["kubeVersion"] == f">={KUBE_FLOOR}-0"
    for doc in docs:
        assert doc["metadata"]["namespace"] == case.namespace, doc["metadata"]
        for version in (KUBE_FLOOR, KUBE_VERSION):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path} (Kubernetes {version}): {exc.message}")


def test_every_multiregion_values_file_is_rendered() -> None:
    used = {name for case in MULTIREGION_CASES for name in case.files}
    present = {p.name for p in MULTIREGION.glob("*.yaml")}
    assert present == used, f"values files not covered by a render case: {present - used}"


def _leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


@pytest.mark.parametrize("chart", CHARTS)
def test_every_value_is_documented_and_every_doc_names_a_value(chart: str) -> None:
    text = (HELM_DIR / chart / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.M))
    leaves = set(_leaf_paths(yaml.safe_load(text)))
    undocumented = sorted(p for p in leaves if not any(p == d or p.startswith(d + ".") for d in documented))
    assert not undocumented, f"values without a `## @param` line: {undocumented}"
    stale = sorted(d for d in documented if not any(p == d or p.startswith(d + ".") for p in leaves))
    assert not stale, f"`## @param` lines naming no value: {stale}"
    readme = (HELM_DIR / chart / "README.md").read_text()
    missing = sorted(d for d in documented if f"| `{d}` |" not in readme)
    assert not missing, f"parameters missing from {chart}/README.md's tables: {missing}"
    with helm.Chart.load(HELM_DIR / chart) as loaded:
        assert loaded.schema is not None, "no values.schema.json"
        # The defaults themselves satisfy the schema (Helm checks user values only after merging them in).
        loaded.validate_schema(loaded.values)


# --- what the edge chart must get right ------------------------------------------------------------------------


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.id)
def test_edge_probes_command_and_hardening(case: Case) -> None:
    docs = render(case)
    values = values_for(case)
    deployment = one(docs, "Deployment")
    ctr = container(deployment)
    port = next(p for p in ctr["ports"] if p["name"] == "http")["containerPort"]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    workers = str(values.get("workers", 2))
    assert [*ctr["command"], *ctr["args"]] == [
        "adserver", "edge", "--host", "0.0.0.0", "--port", str(port), "--workers", workers,
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert ctr["securityContext"]["runAsNonRoot"] is True
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    # A read-only root needs somewhere writable for granian and Python.
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert ctr["resources"]["requests"]["cpu"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_edge_scrape_annotations_can_be_turned_off() -> None:
    docs = render(DEFAULT_CASES[0], {"metrics": {"scrapeAnnotations": False}})
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    assert not any(k.startswith("prometheus.io/") for k in annotations)


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.id)
def test_edge_region_pop_and_nats_url_reach_the_process(case: Case) -> None:
    values = values_for(case)
    docs = render(case)
    env = pod_env(docs, pod_name=f"{case.release}-7d9f8b6c5d-x2x7q")
    settings = EdgeSettings.from_env(env)  # the process's own loader: raises listing every bad variable
    assert settings.edge_region == values.get("region", "eu")
    assert settings.edge_pop == f"{case.release}-7d9f8b6c5d-x2x7q", "an empty pop must default to the pod name"
    assert settings.nats_url == values.get("natsUrl", "nats://nats:4222")
    assert settings.edge_hub_domain == values.get("hubDomain", "")
    assert settings.edge_tcf_vendor_id == values.get("tcfVendorId", 0)
    if case.files:
        assert settings.nats_url == f"nats://nats-leaf.{values['region']}.svc:4222"
        # A leaf node with a JetStream domain of its own: snapshots come from the hub's domain.
        assert settings.edge_hub_domain == "hub"
        assert settings.edge_public_url == values["publicUrl"]
        assert set(settings.edge_signing_keys.keys) == {"k1", "k2"}
    else:
        # Generated keys: one random 32-byte key, valid for the token signer.
        assert len(settings.edge_signing_keys.keys[settings.edge_signing_keys.active_kid]) == 32
    unknown = sorted(n for n in env if n.startswith("ADSERVER_") and n not in KNOWN_ENV)
    assert not unknown, f"the chart sets variables no process reads (typos?): {unknown}"


def test_edge_pop_value_overrides_the_pod_name() -> None:
    env = pod_env(render(DEFAULT_CASES[0], {"pop": "fra1"}), pod_name="ignored")
    assert env["ADSERVER_EDGE_POP"] == "fra1"


@pytest.mark.parametrize("existing", [False, True], ids=["chart-secret", "existing-secret"])
def test_edge_signing_keys_come_only_from_a_secret(existing: bool) -> None:
    key_b64 = base64.b64encode(b"\x07" * 32).decode()
    extra: dict[str, Any] = (
        {"signingKeys": {"existingSecret": "my-keys", "existingSecretKey": "keys"}}
        if existing else {"signingKeys": {"value": f"live:{key_b64}"}}
    )
    text = rendered_text(DEFAULT_CASES[0], extra)
    docs = render(DEFAULT_CASES[0], extra)
    ref = env_entry(container(one(docs, "Deployment")), "ADSERVER_EDGE_SIGNING_KEYS")
    assert set(ref) == {"name", "valueFrom"}, "signing keys must not be a literal value"
    secret_ref = ref["valueFrom"]["secretKeyRef"]
    deployment_text = text["edge/templates/deployment.yaml"]
    if existing:
        assert secret_ref == {"name": "my-keys", "key": "keys"}
        assert [d for d in docs if d["kind"] == "Secret"] == [], "an existing Secret must not be shadowed"
    else:
        secret = one(docs, "Secret")
        assert secret_ref == {"name": secret["metadata"]["name"], "key": "signing-keys"}
        assert base64.b64decode(secret["data"]["signing-keys"]).decode() == f"live:{key_b64}"
        assert key_b64 not in deployment_text
        assert base64.b64encode(f"live:{key_b64}".encode()).decode() not in deployment_text
    # No container anywhere gets the keys as a literal.
    for doc in docs:
        if doc["kind"] == "Deployment":
            for item in container(doc)["env"]:
                assert "live:" not in str(item.get("value", ""))


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.id)
def test_edge_autoscaler_and_disruption_budget_target_the_pods(case: Case) -> None:
    docs = render(case)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment's selector must match its own pods"

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    # With an HPA the Deployment leaves replicas alone, or every `helm upgrade` would reset the scale.
    assert "replicas" not in deployment["spec"]

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    if case.files:
        assert pdb["spec"]["minAvailable"] == 2
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "a PDB at minReplicas blocks drains"

    service = one(docs, "Service")
    assert service["spec"]["selector"] == selector


def test_edge_without_autoscaling_sets_replicas_and_renders_no_hpa() -> None:
    docs = render(DEFAULT_CASES[0], {"autoscaling": {"enabled": False}, "replicaCount": 4})
    assert one(docs, "Deployment")["spec"]["replicas"] == 4
    assert "HorizontalPodAutoscaler" not in kinds(docs)


def test_edge_ingress_host_becomes_the_public_url() -> None:
    docs = render(DEFAULT_CASES[0], {"ingress": {"enabled": True, "hostname": "eu.ads.example.com", "tls": True}})
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "eu.ads.example.com"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(docs, "Service")["metadata"]["name"], "port": {"name": "http"}}
    env = container(one(docs, "Deployment"))["env"]
    assert {"name": "ADSERVER_EDGE_PUBLIC_URL", "value": "https://eu.ads.example.com"} in env


# --- control plane and collector --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.chart == "control-plane"], ids=lambda c: c.id)
def test_control_plane_environment_is_accepted_by_its_settings(case: Case) -> None:
    docs = render(case)
    values = values_for(case)
    deployment = one(docs, "Deployment")
    ctr = container(deployment)
    assert [*ctr["command"], *ctr["args"]] == ["adserver", "control-plane", "--host", "0.0.0.0", "--port", "8000"]
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True

    admin = env_entry(ctr, "ADSERVER_CP_ADMIN_TOKEN")
    assert "secretKeyRef" in admin["valueFrom"], "the admin token must come from a Secret"
    env = pod_env(docs, pod_name="adserver-control-plane-0")
    settings = ControlPlaneSettings.from_env(env)
    check_topology(settings)  # the process's own start-up refusal (chdb with an external collector)
    target = parse_store_url(settings.cp_store_url)
    assert settings.cp_regions == tuple(values.get("regions", ["eu", "us"]))
    assert settings.cp_leaf_regions == tuple(values.get("leafRegions", []))
    assert settings.cp_admin_token
    unknown = sorted(n for n in env if n.startswith("ADSERVER_") and n not in KNOWN_ENV)
    assert not unknown, unknown

    if not case.files:  # the embedded default: chdb on a PVC, one replica, Recreate
        assert target.kind == "chdb" and target.location == "/data/chdb"
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        pvc = one(docs, "PersistentVolumeClaim")
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert {"name": "data", "mountPath": "/data"} in ctr["volumeMounts"]
        assert settings.cp_embedded_collector is True
    else:  # a ClickHouse server: credentials spliced from a Secret, no PVC
        assert target.kind == "clickhouse"
        assert settings.cp_store_url == "https://adserver:s3cret-pw@clickhouse.clickhouse.svc:8443/ads"
        store_literal = env_entry(ctr, "ADSERVER_CP_STORE_URL")["value"]
        assert "s3cret" not in store_literal and "$(CLICKHOUSE_PASSWORD)" in store_literal
        assert "PersistentVolumeClaim" not in kinds(docs)
        assert "secretKeyRef" in env_entry(ctr, "CLICKHOUSE_PASSWORD")["valueFrom"]


def test_control_plane_on_a_clickhouse_server_may_scale() -> None:
    case = MULTIREGION_CASES[0]
    deployment = one(render(case), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env_entry(container(deployment), "ADSERVER_CP_EMBEDDED_COLLECTOR")["value"] == "false"


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.chart == "collector"], ids=lambda c: c.id)
def test_collector_runs_alone_against_a_clickhouse_server(case: Case) -> None:
    docs = render(case)
    ctr = container(one(docs, "Deployment"))
    assert [*ctr["command"], *ctr["args"]] == ["adserver", "collector"]
    env = pod_env(docs, pod_name="adserver-collector-0")
    settings = ControlPlaneSettings.from_env(env)
    values = values_for(case)
    assert parse_store_url(settings.cp_store_url).kind == "clickhouse"
    # The collector also creates the hub's events stream, sourcing every region: it needs both lists.
    assert settings.cp_regions == tuple(values.get("regions", ["eu", "us"]))
    assert settings.cp_leaf_regions == tuple(values.get("leafRegions", []))
    unknown = sorted(n for n in env if n.startswith("ADSERVER_") and n not in KNOWN_ENV)
    assert not unknown, unknown
    if case.files:
        assert settings.nats_url == "nats://nats.nats.svc:4222"
        assert "s3cret" not in env_entry(ctr, "ADSERVER_CP_STORE_URL")["value"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True


# --- the hub-and-leaf NATS topology -------------------------------------------------------------------------------

# What each release writes for the topology by default (one NATS server holds every stream) and with the
# multi-region values (a hub in JetStream domain "hub", a leaf per region in the domain named after it).
TOPOLOGY_ENV = {"edge": "ADSERVER_EDGE_HUB_DOMAIN", "control-plane": "ADSERVER_CP_LEAF_REGIONS",
                "collector": "ADSERVER_CP_LEAF_REGIONS"}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_topology_settings_are_literal_env_vars(case: Case) -> None:
    ctr = container(one(render(case), "Deployment"))
    entry = env_entry(ctr, TOPOLOGY_ENV[case.chart])
    assert set(entry) == {"name", "value"}, entry
    if not case.files:
        expected = ""
    elif case.chart == "edge":
        expected = "hub"
    else:
        expected = "eu,us"
    assert entry["value"] == expected


@pytest.mark.parametrize(("chart", "extra", "expected"), [
    ("edge", {"hubDomain": "central_hub-1"}, "central_hub-1"),
    ("control-plane", {"regions": ["eu", "us", "ap"], "leafRegions": ["us", "ap"]}, "us,ap"),
    ("collector", {"regions": ["eu", "us", "ap"], "leafRegions": ["ap"]}, "ap"),
], ids=["edge", "control-plane", "collector"])
def test_topology_values_reach_the_process_settings(chart: str, extra: dict[str, Any], expected: str) -> None:
    case = next(c for c in DEFAULT_CASES if c.chart == chart)
    docs = render(case, extra)
    assert env_entry(container(one(docs, "Deployment")), TOPOLOGY_ENV[chart])["value"] == expected
    env = pod_env(docs, pod_name="pod-0")
    if chart == "edge":
        assert EdgeSettings.from_env(env).edge_hub_domain == expected
    else:
        settings = ControlPlaneSettings.from_env(env)
        assert settings.cp_regions == tuple(extra["regions"])
        assert settings.cp_leaf_regions == tuple(expected.split(","))


def test_multiregion_edges_and_central_plane_agree_on_the_topology() -> None:
    """Every region file points its edges at a leaf and the hub's domain, and the central plane sources that
    region's stream from the leaf: a region missing on either side would lose its events or its snapshots."""
    central = values_for(Case("control-plane", "adserver", "adserver", ("central.yaml",)))
    assert central["leafRegions"] == central["regions"]
    edge_regions = set()
    for case in (c for c in MULTIREGION_CASES if c.chart == "edge"):
        env = pod_env(render(case), pod_name=f"{case.release}-0")
        edge = EdgeSettings.from_env(env)
        assert edge.edge_hub_domain == "hub"
        assert edge.edge_region in central["leafRegions"]
        edge_regions.add(edge.edge_region)
    assert edge_regions == set(central["regions"]), "a region without an edge values file, or the reverse"
    for case in (c for c in MULTIREGION_CASES if c.chart != "edge"):
        env = pod_env(render(case), pod_name="adserver-0")
        assert env["ADSERVER_CP_LEAF_REGIONS"] == env["ADSERVER_CP_REGIONS"] == "eu,us"


def test_the_tcf_vendor_id_reaches_the_edge() -> None:
    case = next(c for c in DEFAULT_CASES if c.chart == "edge")
    env = pod_env(render(case, {"tcfVendorId": 12_345}), pod_name=f"{case.release}-7d9f8b6c5d-x2x7q")
    assert EdgeSettings.from_env(env).edge_tcf_vendor_id == 12_345  # rendered whole, not as 1.2345e+04


def test_placement_reserves_and_the_quality_floor_reach_the_control_plane() -> None:
    case = next(c for c in DEFAULT_CASES if c.chart == "control-plane")
    default = ControlPlaneSettings.from_env(pod_env(render(case), pod_name="adserver-control-plane-0"))
    assert (default.cp_placement_reserves, default.cp_min_ctr) == ({}, 0.0)
    assert (default.cp_max_prior_ctr, default.cp_max_prior_cvr) == (0.05, 0.2)
    floors = {"placementReserves": {"home": 3_000_000, "sports.top": 250_000}, "minCtr": 0.0005,
              "maxPriorCtr": 0.03, "maxPriorCvr": 0.1}
    env = pod_env(render(case, floors), pod_name="adserver-control-plane-0")
    settings = ControlPlaneSettings.from_env(env)  # 3,000,000 rendered whole, not as 3e+06
    assert settings.cp_placement_reserves == {"home": 3_000_000, "sports.top": 250_000}
    assert settings.cp_min_ctr == 0.0005
    assert (settings.cp_max_prior_ctr, settings.cp_max_prior_cvr) == (0.03, 0.1)


def test_the_learners_settings_reach_the_control_plane() -> None:
    """Each setting of the click model's and the conversion rates' learning, rendered so that the process parses
    it: 2,592,000 whole (Helm holds values as float64, and would print 2.592e+06), 0.5 as it is."""
    case = next(c for c in DEFAULT_CASES if c.chart == "control-plane")
    default = ControlPlaneSettings.from_env(pod_env(render(case), pod_name="adserver-control-plane-0"))
    assert (default.cp_ctr_min_impressions, default.cp_cvr_history_s, default.cp_cvr_label_delay_s) == (
        10_000, 2_592_000, 604_800)
    learning = {"ctrTrainEveryS": 0.5 + 1, "ctrLabelDelayS": 30, "ctrHistoryS": 3_600, "ctrMinImpressions": 2_500_000,
                "ctrDecisionLookbackS": 86_400, "cvrEveryS": 120, "cvrLabelDelayS": 0.5, "cvrHistoryS": 7_776_000}
    env = pod_env(render(case, {"learning": learning}), pod_name="adserver-control-plane-0")
    assert env["ADSERVER_CP_CVR_HISTORY_S"] == "7776000" and env["ADSERVER_CP_CVR_LABEL_DELAY_S"] == "0.5"
    s = ControlPlaneSettings.from_env(env)
    assert (s.cp_ctr_train_every_s, s.cp_ctr_label_delay_s, s.cp_ctr_history_s, s.cp_ctr_min_impressions,
            s.cp_ctr_decision_lookback_s, s.cp_cvr_every_s, s.cp_cvr_label_delay_s, s.cp_cvr_history_s) == (
        1.5, 30, 3_600, 2_500_000, 86_400, 120, 0.5, 7_776_000)


# --- bad values are refused, with a message that names them -----------------------------------------------------

SCHEMA_REFUSALS = [
    ("edge", {"replicaCount": "two"}, ["/replicaCount", "want integer"]),
    ("edge", {"region": None}, ["missing property 'region'"]),
    ("edge", {"region": "eu.west"}, ["/region", "does not match pattern"]),
    ("edge", {"workers": 0}, ["/workers", "minimum"]),
    ("edge", {"natsUrl": "http://nats:4222"}, ["/natsUrl"]),
    ("edge", {"signingKeys": {"value": "k1:dG9vLXNob3J0"}}, ["/signingKeys/value"]),
    ("edge", {"replicaCont": 3}, ["additional properties 'replicaCont' not allowed"]),
    ("edge", {"hubDomain": "hub.central"}, ["/hubDomain", "does not match pattern"]),
    ("edge", {"tcfVendorId": 70000}, ["/tcfVendorId", "maximum"]),
    ("control-plane", {"regions": []}, ["/regions", "minItems"]),
    ("control-plane", {"regions": ["eu", "eu"]}, ["/regions"]),
    ("control-plane", {"grantSlice": 1.5}, ["/grantSlice", "maximum"]),
    ("control-plane", {"replicaCount": "two"}, ["/replicaCount", "want integer"]),
    ("control-plane", {"leafRegions": ["eu.west"]}, ["/leafRegions/0", "does not match pattern"]),
    ("control-plane", {"placementReserves": {"home": -1}}, ["/placementReserves/home", "minimum"]),
    ("control-plane", {"placementReserves": {"ho me": 5}}, ["invalid propertyName 'ho me'", "does not match pattern"]),
    ("control-plane", {"minCtr": 1}, ["/minCtr", "exclusiveMaximum"]),
    ("control-plane", {"maxPriorCtr": 0}, ["/maxPriorCtr", "exclusiveMinimum"]),
    ("control-plane", {"learning": {"ctrMinImpressions": 0}}, ["/learning/ctrMinImpressions", "minimum"]),
    ("control-plane", {"learning": {"cvrEverys": 5}}, ["additional properties 'cvrEverys' not allowed"]),
    ("collector", {"leafRegions": "eu,us"}, ["/leafRegions", "want array"]),
    ("collector", {"store": {"url": ""}}, ["/store/url"]),
]


@pytest.mark.parametrize(("chart", "bad", "fragments"), SCHEMA_REFUSALS,
                         ids=[f"{c}-{next(iter(b))}" for c, b, _ in SCHEMA_REFUSALS])
def test_values_schema_refuses_bad_values(chart: str, bad: dict[str, Any], fragments: list[str]) -> None:
    case = next(c for c in DEFAULT_CASES if c.chart == chart)
    with pytest.raises(helm.HelmValuesError) as info:
        render(case, bad)
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message
    for fragment in fragments:
        assert fragment in message, message


TEMPLATE_REFUSALS = [
    ("collector", {"store": {"url": "chdb:///data/chdb"}}, ["is a chdb directory", "inside the control plane"]),
    ("collector", {"store": {"url": "/data/chdb"}}, ["is a chdb directory"]),
    ("collector", {"leafRegions": ["ap"]}, ['leafRegions names "ap"', "not in regions (eu, us)"]),
    ("control-plane", {"leafRegions": ["eu", "ap"]}, ['leafRegions names "ap"', "not in regions (eu, us)"]),
    ("control-plane", {"replicaCount": 2}, ["replicaCount is 2", "one process per data directory"]),
    ("control-plane", {"minCtr": 0.05}, ["minCtr (0.05) must be below maxPriorCtr (0.05)"]),
    ("control-plane", {"minCtr": 0.02, "maxPriorCtr": 0.01}, ["minCtr (0.02) must be below maxPriorCtr (0.01)"]),
    ("control-plane", {"collector": {"embedded": False}}, ["collector.embedded is false", "chdb"]),
    ("control-plane", {"store": {"url": "https://ads:pw@ch:8443/ads"}}, ["must not carry credentials"]),
    ("control-plane", {"store": {"url": "http://ch:9000/ads"}}, ["native-protocol port", "8123"]),
    ("control-plane", {"store": {"url": "chdb:///var/chdb"}}, ["must lie under persistence.mountPath"]),
    ("control-plane", {"store": {"url": "https://ch:8443/ads", "username": "ads"}}, ["store.username is set"]),
    ("edge", {"signingKeys": {"existingSecret": "k", "value": SIGNING_KEYS}}, ["either signingKeys.existingSecret"]),
    ("edge", {"pdb": {"minAvailable": 1, "maxUnavailable": 1}}, ["pdb.minAvailable or pdb.maxUnavailable"]),
    ("edge", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, ["maxReplicas (2) is below"]),
]


@pytest.mark.parametrize(("chart", "bad", "fragments"), TEMPLATE_REFUSALS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(TEMPLATE_REFUSALS)])
def test_render_refuses_inconsistent_values_with_a_clear_message(
    chart: str, bad: dict[str, Any], fragments: list[str]
) -> None:
    case = next(c for c in DEFAULT_CASES if c.chart == chart)
    with pytest.raises(helm.HelmRenderError) as info:
        render(case, bad)
    message = str(info.value)
    assert message.count(f"{chart}: ") >= 1, message
    for fragment in fragments:
        assert fragment in message, message


# --- the charts' command lines, run for real ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_nats() -> Iterator[tuple[ProcessGroup, str]]:
    """A nats-server of our own: the control plane started below creates streams and publishes snapshots."""
    with tempfile.TemporaryDirectory(prefix="helm-test-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            _, url = start_nats(group, Path(tmp) / "js")
            yield group, url
        finally:
            group.stop_all()


def _run_as_rendered(group: ProcessGroup, name: str, docs: list[dict[str, Any]], overrides: dict[str, str],
                     pod_name: str) -> tuple[Proc, str, dict[str, Any]]:
    """Start the chart's container command on this machine: same argv and env, bound to 127.0.0.1."""
    ctr = container(one(docs, "Deployment"))
    argv = [*ctr["command"], *ctr["args"]]
    port = free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"  # tests talk to 127.0.0.1 only
    argv[argv.index("--port") + 1] = str(port)
    # The image's PATH has the `adserver` console script; here it sits next to this interpreter.
    script = Path(sys.executable).parent / argv[0]
    assert script.exists(), f"the chart runs {argv[0]!r}, which this package does not install"
    env = {**pod_env(docs, pod_name), **overrides}
    proc = group.start(name, [str(script), *argv[1:]], env)
    return proc, f"http://127.0.0.1:{port}", ctr


def _probe_url(base: str, ctr: dict[str, Any], probe: str) -> str:
    return base + ctr[probe]["httpGet"]["path"]


def test_default_releases_start_and_pass_their_probes(own_nats: tuple[ProcessGroup, str]) -> None:
    """control-plane and edge with their default values, run with the rendered argv and environment."""
    group, nats_url = own_nats
    with tempfile.TemporaryDirectory(prefix="helm-chdb-") as data:
        cp_docs = render(DEFAULT_CASES[1])
        cp_store = env_entry(container(one(cp_docs, "Deployment")), "ADSERVER_CP_STORE_URL")["value"]
        # The PVC is mounted at /data in the pod; here a temporary directory stands in for it.
        cp, cp_url, cp_ctr = _run_as_rendered(
            group, "helm-control-plane", cp_docs,
            {"ADSERVER_NATS_URL": nats_url, "ADSERVER_CP_STORE_URL": cp_store.replace("/data", data, 1)},
            pod_name="adserver-control-plane-0",
        )
        edge_docs = render(DEFAULT_CASES[0], {"workers": 1})
        edge, edge_url, edge_ctr = _run_as_rendered(
            group, "helm-edge", edge_docs, {"ADSERVER_NATS_URL": nats_url}, pod_name="edge-eu-5f7d8-abcde",
        )
        try:
            wait_ready(_probe_url(cp_url, cp_ctr, "livenessProbe"), cp, timeout=60)
            wait_ready(_probe_url(cp_url, cp_ctr, "readinessProbe"), cp, timeout=60)
            wait_ready(_probe_url(edge_url, edge_ctr, "livenessProbe"), edge, timeout=30)
            # Ready means the edge holds a snapshot for the chart's region, built by the control plane.
            wait_ready(_probe_url(edge_url, edge_ctr, "readinessProbe"), edge, timeout=30)
            ready = httpx.get(_probe_url(edge_url, edge_ctr, "readinessProbe"), timeout=5).json()
            assert ready["ready"] is True
            assert ready["region"] == "eu"
            assert ready["pop"] == "edge-eu-5f7d8-abcde"
            metrics = httpx.get(edge_url + "/metrics", timeout=5)
            assert metrics.status_code == 200 and "adserver_snapshot_version" in metrics.text
        finally:
            edge.stop()
            cp.stop()
