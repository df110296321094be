"""The balancer's own metrics, on an explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `*_created` series double the series count and no dashboard or rule reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3)
_DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BalancerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter("balancer_decisions", "Routing decisions by outcome",
                                 ["policy", "substation", "outcome"], registry=registry)
        self.decision_seconds = Histogram(
            "balancer_decision_duration_seconds", "In-process decision time (no I/O)",
            buckets=_DECISION_BUCKETS, registry=registry)
        self.dispatch_seconds = Histogram(
            "balancer_dispatch_duration_seconds", "Whole dispatch time including forwarding",
            buckets=_DISPATCH_BUCKETS, registry=registry)
        self.query_seconds = Histogram(
            "balancer_prometheus_query_duration_seconds",
            "Time to evaluate the grid and policy queries", ["policy"], registry=registry)
        self.query_errors = Counter("balancer_prometheus_query_errors",
                                    "Failed policy evaluations by reason", ["policy", "reason"],
                                    registry=registry)
        self.snapshot_age = Gauge("balancer_snapshot_age_seconds",
                                  "Age of the data decisions are made from: now minus the "
                                  "newest scrape the snapshot holds", registry=registry)
        self.policy_score = Gauge("balancer_policy_score", "Policy score per substation",
                                  ["policy", "substation"], registry=registry)
        self.policy_info = Gauge("balancer_policy_info", "1 for the policy this replica serves",
                                 ["policy"], registry=registry)
        self.policy_no_data = Gauge(
            "balancer_policy_no_data",
            "1 while the serving policy's query gives no substation that is up a score "
            "(ranked by utilization instead)", registry=registry)
        self.pending_kw = Gauge("balancer_pending_ledger_kw",
                                "kW assigned that Prometheus has not scraped yet",
                                ["substation"], registry=registry)
        self.reloads = Counter("balancer_policy_reloads", "Policy reloads by result", ["result"],
                               registry=registry)
        # The counter says a reload failed; this says it still does (alerts must not resolve
        # while the broken file is still on disk just because no new edit was counted).
        self.reload_failing = Gauge(
            "balancer_policy_reload_failing",
            "1 while the latest policy reload was refused and the previous policy keeps serving",
            registry=registry)
        self.forward_retries = Counter("balancer_forward_retries",
                                       "Requests tried on another substation after a failure",
                                       ["substation"], registry=registry)
        self.forward_refusals = Counter("balancer_forward_refusals",
                                        "Forwards a substation refused or failed",
                                        ["substation", "reason"], registry=registry)
        self.degraded = Gauge("balancer_degraded",
                              "1 while deciding without a fresh snapshot", registry=registry)
        self.in_flight = Gauge("balancer_dispatches_in_flight",
                               "Dispatches being placed now", registry=registry)
        self.ejected = Gauge("balancer_ejected_substations",
                             "Substations ejected after failures", registry=registry)
        self.evaluation_failures = Gauge(
            "balancer_policy_evaluation_consecutive_failures",
            "Policy evaluations that failed in a row (0 once one succeeds)", registry=registry)
        self.last_evaluation = Gauge(
            "balancer_policy_last_success_timestamp_seconds",
            "When the policy was last evaluated successfully (Unix time)", registry=registry)
        for result in ("success", "error"):
            self.reloads.labels(result=result)

    def serving(self, policy: str) -> None:
        """`policy` serves now: one info series for it, and no score series of another policy
        (left alone they would freeze at their last values, as if still evaluated)."""
        self.policy_info.clear()
        self.policy_info.labels(policy=policy).set(1.0)
        self.policy_score.clear()
        self.policy_no_data.set(0.0)

    def set_scores(self, policy: str, scores: dict[str, float]) -> None:
        """Exactly these (substation: score) series of `policy`: a substation that has no
        score now (gone, or the query gave it none) loses its series instead of keeping an
        old value."""
        for labels in list(self.policy_score._metrics):  # no public API lists children
            if labels[0] != policy or labels[1] not in scores:
                self.policy_score.remove(*labels)
        for substation, score in scores.items():
            self.policy_score.labels(policy=policy, substation=substation).set(score)

    def prune_substations(self, keep: set[str]) -> None:
        """Drop label sets of substations that left the grid, so series stay bounded."""
        for labels in list(self.pending_kw._metrics):  # no public API lists children
            if labels[-1] not in keep:
                self.pending_kw.remove(*labels)
