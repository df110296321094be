"""Policies from a Kubernetes ConfigMap volume (deploy/kubernetes/base): an edit is reloaded.

The kubelet never rewrites a mounted ConfigMap's file. It writes the new contents into a fresh
hidden directory, points the `..data` symlink at it by renaming a new symlink over it, and
removes the old directory; `least-utilization.yaml` is a symlink to `..data/least-utilization.yaml`
all along. The balancer notices edits by the policy file's mtime, read through the symlinks
(balancer/refresh.py), so the swap is an edit like any other. `kubelet_write` does what the
kubelet's AtomicWriter does, step by step.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from balancer.app import create_app
from balancer.config import BalancerConfig
from tests.unit.test_refresh import (
    FAST,
    A,
    _scored,
    eventually,
    fake,
    metric_value,
    policy_view,
)

Client = TestClient[web.Request, web.Application]
_generation = itertools.count(1)


def kubelet_write(volume: Path, files: dict[str, str]) -> None:
    """Update a ConfigMap volume as the kubelet does (pkg/volume/util/atomic_writer.go)."""
    volume.mkdir(exist_ok=True)
    data = volume / "..data"
    old = Path(os.readlink(data)).name if data.is_symlink() else None
    fresh = volume / f"..2025_01_01_00_00_00.{next(_generation):09d}"
    fresh.mkdir()
    for name, text in files.items():
        (fresh / name).write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(fresh.name)
    tmp.replace(data)                                   # the one atomic step
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if old is not None:
        for path in (volume / old).iterdir():
            path.unlink()
        (volume / old).rmdir()


def policy(description: str) -> str:
    return FAST + f"description: {description}\n"


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    kubelet_write(tmp_path / "policies", {"fast.yaml": policy("first")})
    return tmp_path / "policies"


async def start(aiohttp_client: Any, volume: Path) -> Client:
    config = BalancerConfig(policy_dir=str(volume), policy="fast", seed=1)
    client: Client = await aiohttp_client(create_app(config, client=fake({A: (10.0, 100.0)})))
    await eventually(lambda: _scored(client, A), "the first snapshot")
    return client


async def description_is(client: Client, text: str) -> bool:
    return bool((await policy_view(client))["description"] == text)


async def test_a_configmap_update_is_reloaded_without_a_restart(aiohttp_client: Any,
                                                               volume: Path) -> None:
    client = await start(aiohttp_client, volume)
    assert await description_is(client, "first")
    kubelet_write(volume, {"fast.yaml": policy("second")})
    await eventually(lambda: description_is(client, "second"), "the swapped policy to serve")
    assert await metric_value(client, "balancer_policy_reloads_total", result="success") == 1
    kubelet_write(volume, {"fast.yaml": policy("third")})
    await eventually(lambda: description_is(client, "third"), "the next swap to serve")


async def test_a_broken_configmap_update_is_refused_and_the_fix_is_taken(aiohttp_client: Any,
                                                                        volume: Path) -> None:
    client = await start(aiohttp_client, volume)
    kubelet_write(volume, {"fast.yaml": policy("broken").replace("better: lower",
                                                                 "better: sideways")})

    async def refused() -> bool:
        return "better" in ((await policy_view(client))["reload_error"] or "")
    await eventually(refused, "the broken edit to be refused")
    assert await description_is(client, "first")       # the last good policy keeps serving
    kubelet_write(volume, {"fast.yaml": policy("fixed")})
    await eventually(lambda: description_is(client, "fixed"), "the fixed policy to serve")
    assert (await policy_view(client))["reload_error"] is None
