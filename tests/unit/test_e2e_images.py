"""The e2e test's image helpers, without an engine: what makes a cached image stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("docker", reason="the Python docker package is not installed")

from gridlb.promconfig import REPO_ROOT
from tests.e2e.images import (
    OFFICIAL_BASE,
    OFFICIAL_GRAFANA,
    OFFICIAL_POSTGRES,
    OFFICIAL_PROMETHEUS,
    _local,
    _repository,
    app_image_tag,
    copy_sources,
    pip_platforms,
    runtime_requirements,
)


def test_copy_sources_are_read_from_the_dockerfile() -> None:
    sources = copy_sources((REPO_ROOT / "Dockerfile").read_text())
    assert {"pyproject.toml", "gridlb", "balancer", "substation", "ingress",
            "container/substation-entrypoint.sh"} <= set(sources)
    assert all((REPO_ROOT / s).exists() for s in sources), sources
    assert copy_sources("COPY --from=build /a /b\nCOPY a b ./\n") == ["a", "b"]


def copy_of_the_build_inputs(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "Dockerfile", repo / "Dockerfile")
    for source in copy_sources((REPO_ROOT / "Dockerfile").read_text()):
        target = repo / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / source).is_dir():
            shutil.copytree(REPO_ROOT / source, target,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO_ROOT / source, target)
    return repo


def test_app_image_tag_changes_with_what_the_image_is_built_from(tmp_path: Path) -> None:
    repo = copy_of_the_build_inputs(tmp_path)
    tag = app_image_tag("sha256:base", repo)
    assert tag == app_image_tag("sha256:base", repo), "the tag must be stable"
    assert tag != app_image_tag("sha256:other-base", repo)
    (repo / "gridlb" / "__pycache__").mkdir(exist_ok=True)
    (repo / "gridlb" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert tag == app_image_tag("sha256:base", repo), "bytecode is not an input"
    (repo / "balancer" / "selection.py").write_text("# changed\n")
    assert tag != app_image_tag("sha256:base", repo)


def test_official_images_are_the_compose_files_defaults() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for name in (OFFICIAL_BASE, OFFICIAL_PROMETHEUS, OFFICIAL_GRAFANA):
        assert f":-{name}}}" in text
    assert f":-{OFFICIAL_POSTGRES}}}" in (REPO_ROOT / "docker-compose.postgres.yml").read_text()


def test_wheelhouse_targets_every_manylinux_tag_debian_runs() -> None:
    tags = pip_platforms("x86_64")
    assert "manylinux_2_36_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags   # bookworm's glibc is 2.36
    assert pip_platforms("arm64")[0] == "manylinux_2_36_aarch64"


def test_runtime_requirements_leave_out_dev_extras() -> None:
    requirements = runtime_requirements()
    assert any(r.startswith("aiohttp") for r in requirements)
    assert not any("extra ==" in r or r.startswith("pytest") for r in requirements)


def test_image_names_compare_however_the_engine_spells_them() -> None:
    assert _local("docker.io/library/sglb-e2e-app:1") == _local("localhost/sglb-e2e-app:1") \
        == "sglb-e2e-app:1"
    assert _repository("localhost/sglb-e2e-python:abc") == "sglb-e2e-python"
