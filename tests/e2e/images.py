"""Images for the Compose stack where no registry can be reached, built and cached in the engine.

The stack's Dockerfile takes its base image as a build argument (`GRID_BASE_IMAGE`) and Compose
takes Prometheus's image from `GRID_PROMETHEUS_IMAGE`. Where the official images cannot be pulled,
both are made from Debian's packages:

1. `debootstrap --variant=minbase` from the Debian mirror apt uses here, imported as an image;
2. on it, Debian's python3 and a wheelhouse of the project's dependencies, downloaded on the host
   (containers reach Debian's mirror but not PyPI), which pip installs from instead of PyPI
   (`container/python-base.Dockerfile`);
3. on it, Debian's prometheus package (`container/prometheus.Dockerfile`), and Debian's
   postgresql package for docker-compose.postgres.yml (`container/postgres.Dockerfile`).

Each image's tag is a hash of everything it is made from, so a later run finds it and builds
nothing; a change to a recipe or a dependency makes a new tag. Older tags of ours are removed.

`python -m tests.e2e.images` builds them against the engine in DOCKER_HOST and prints the two
variables to export before `docker compose up` (docs/operations.md, the podman route).
docker-compose.postgres.yml takes PostgreSQL's image from `GRID_POSTGRES_IMAGE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
from docker.models.images import Image

from gridlb.promconfig import REPO_ROOT

DEBIAN_SUITE = "bookworm"
DEBIAN_PYTHON = "3.11"          # the python3 of DEBIAN_SUITE, which the wheelhouse must match
RECIPE = "1"                    # change to rebuild every cached local image
PROJECT_DIST = "smart-grid-load-balancer"
KEEP_OLD_IMAGES_S = 3600.0      # an older tag may still be used by a concurrent run for a while

Log = Callable[[str], None]


def compose_default(variable: str, compose_file: Path = REPO_ROOT / "docker-compose.yml") -> str:
    """The default docker-compose.yml gives `variable` (`${VARIABLE:-default}`)."""
    match = re.search(r"\$\{" + re.escape(variable) + r":-([^}]+)\}", compose_file.read_text())
    if match is None:
        raise RuntimeError(f"{compose_file.name} gives {variable} no default")
    return match.group(1)


OFFICIAL_BASE = compose_default("GRID_BASE_IMAGE")
OFFICIAL_PROMETHEUS = compose_default("GRID_PROMETHEUS_IMAGE")
OFFICIAL_GRAFANA = compose_default("GRID_GRAFANA_IMAGE")
OFFICIAL_POSTGRES = compose_default("GRID_POSTGRES_IMAGE",
                                    REPO_ROOT / "docker-compose.postgres.yml")


@dataclass(frozen=True)
class StackImages:
    """What Compose needs to build and run the stack on this engine (empty: the defaults)."""
    env: dict[str, str]
    how: str

    @property
    def base(self) -> str:
        return self.env.get("GRID_BASE_IMAGE", OFFICIAL_BASE)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def debian_mirror() -> str:
    """The mirror apt uses here for DEBIAN_SUITE (deb822 or one-line sources alike)."""
    out = subprocess.run(["apt-get", "indextargets", "--format", "$(SITE) $(RELEASE)"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for line in out.splitlines():
        site, _, release = line.partition(" ")
        if release == DEBIAN_SUITE and site.startswith(("http://", "https://")):
            return site.rstrip("/")
    raise RuntimeError(f"apt has no source for Debian {DEBIAN_SUITE}: `apt-get indextargets` "
                       "lists none, so debootstrap has no mirror to use")


def runtime_requirements() -> list[str]:
    """The project's own dependencies (no extras), as installed in this environment."""
    requires = importlib.metadata.requires(PROJECT_DIST) or []
    return sorted(r for r in requires if "extra ==" not in r)


def pip_platforms(machine: str) -> list[str]:
    """Every manylinux tag Debian's glibc (2.36) runs: pip does not widen one tag by itself."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}",
             f"linux_{arch}"]
    return tags


def download_wheelhouse(dest: Path, requirements: Iterable[str]) -> None:
    """Wheels for DEBIAN_PYTHON of every runtime dependency, plus the build backend."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
           "--dest", str(dest), "--only-binary=:all:", "--python-version", DEBIAN_PYTHON,
           "--implementation", "cp", "--abi", f"cp{DEBIAN_PYTHON.replace('.', '')}"]
    for tag in pip_platforms(platform.machine()):
        cmd += ["--platform", tag]
    cmd += [*requirements, "setuptools>=77"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"pip download of the wheelhouse failed:\n{result.stderr[-3000:]}")


class LocalImageBuilder:
    """Builds the registry-free images in the engine `client` talks to, reusing cached ones."""

    def __init__(self, client: docker.DockerClient, log: Log, workdir: Path) -> None:
        self.client = client
        self.log = log
        self.workdir = workdir

    def find(self, tag: str) -> Image | None:
        try:
            return self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None

    def prune(self, keep: str) -> None:
        prune_older_tags(self.client, keep)

    def build(self, tag: str, context: Path, dockerfile: str, buildargs: dict[str, str]) -> None:
        started = time.monotonic()
        try:
            self.client.images.build(path=str(context), dockerfile=dockerfile, tag=tag,
                                     buildargs=buildargs, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log]
            raise RuntimeError(f"building {tag} from {dockerfile} failed: {exc}\n"
                               + "".join(lines)[-3000:]) from exc
        self.log(f"built {tag} in {time.monotonic() - started:.0f} s")

    def debian(self) -> str:
        mirror = debian_mirror()
        tag = f"sglb-e2e-debian:{DEBIAN_SUITE}-{digest(RECIPE, mirror)}"
        if self.find(tag) is None:
            started = time.monotonic()
            rootfs = self.workdir / "rootfs"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
                capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise RuntimeError(f"debootstrap {DEBIAN_SUITE} from {mirror} failed:\n"
                                   + (result.stdout + result.stderr)[-3000:])
            archive = self.workdir / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."],
                           check=True, timeout=300)
            # Imported untagged, then tagged: podman's Docker API ignores the import's tag.
            answer = self.client.api.import_image_from_file(str(archive))
            ids = re.findall(r"sha256:[0-9a-f]{64}", str(answer))
            if not ids:
                raise RuntimeError(f"importing the {DEBIAN_SUITE} rootfs gave no image: {answer}")
            repository, _, version = tag.partition(":")
            self.client.images.get(ids[-1]).tag(repository, version)
            subprocess.run(["rm", "-rf", str(rootfs), str(archive)], check=True, timeout=120)
            self.log(f"built {tag} with debootstrap from {mirror} in "
                     f"{time.monotonic() - started:.0f} s")
        self.prune(tag)
        return tag

    def image_id(self, tag: str) -> str:
        image = self.find(tag)
        if image is None:
            raise RuntimeError(f"{tag} disappeared right after it was built")
        return str(image.id)

    def python_base(self, debian: str) -> str:
        recipe = REPO_ROOT / "container" / "python-base.Dockerfile"
        requirements = runtime_requirements()
        tag = "sglb-e2e-python:" + digest(RECIPE, self.image_id(debian), recipe.read_bytes(),
                                          *requirements)
        if self.find(tag) is None:
            context = self.workdir / "python-base"
            context.mkdir()
            download_wheelhouse(context / "wheelhouse", requirements)
            (context / "Dockerfile").write_bytes(recipe.read_bytes())
            self.build(tag, context, "Dockerfile", {"DEBIAN_IMAGE": debian})
        self.prune(tag)
        return tag

    def prometheus(self, debian: str) -> str:
        recipe = REPO_ROOT / "container" / "prometheus.Dockerfile"
        tag = "sglb-e2e-prometheus:" + digest(RECIPE, self.image_id(debian), recipe.read_bytes())
        if self.find(tag) is None:
            self.build(tag, recipe.parent, recipe.name, {"DEBIAN_IMAGE": debian})
        self.prune(tag)
        return tag

    def postgres(self, debian: str) -> str:
        recipe = REPO_ROOT / "container" / "postgres.Dockerfile"
        entrypoint = recipe.parent / "postgres-entrypoint.sh"
        tag = "sglb-e2e-postgres:" + digest(RECIPE, self.image_id(debian), recipe.read_bytes(),
                                            entrypoint.read_bytes())
        if self.find(tag) is None:
            self.build(tag, recipe.parent, recipe.name, {"DEBIAN_IMAGE": debian})
        self.prune(tag)
        return tag


def prune_older_tags(client: docker.DockerClient, keep: str) -> None:
    """Remove our older tags of `keep`'s repository: not `keep`, nor recent ones (a concurrent
    run may still use them), nor one a container uses (the engine refuses)."""
    for image in client.images.list():
        created = image.attrs.get("Created", "")
        age_s = time.time() - _epoch(created) if created else 0.0
        for tag in image.tags:
            if _repository(tag) == _repository(keep) and _local(tag) != _local(keep) \
                    and age_s > KEEP_OLD_IMAGES_S:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag)


def app_image_tag(base_image_id: str, repo: Path = REPO_ROOT) -> str:
    """A tag naming the app image by what it is built from: the base image, the Dockerfile and
    every file its COPY lines take (read from the Dockerfile, so the two cannot drift apart)."""
    dockerfile = (repo / "Dockerfile").read_text()
    parts: list[str | bytes] = [base_image_id, dockerfile]
    for source in copy_sources(dockerfile):
        root = repo / source
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            parts += [str(path.relative_to(repo)), path.read_bytes()]
    return "sglb-e2e-app:" + digest(*parts)


def copy_sources(dockerfile: str) -> list[str]:
    sources: list[str] = []
    for line in dockerfile.splitlines():
        match = re.match(r"\s*COPY\s+(?!--from)(.+)$", line, re.IGNORECASE)
        if match:
            sources += match.group(1).split()[:-1]   # the last word is the destination
    return sources


def registry_images_present(client: docker.DockerClient, log: Log,
                            names: Iterable[str] = (OFFICIAL_BASE, OFFICIAL_PROMETHEUS,
                                                    OFFICIAL_POSTGRES)) -> bool:
    """Are these official images there, or can they be pulled?"""
    for name in names:
        try:
            client.images.get(name)
            continue
        except docker.errors.ImageNotFound:
            pass
        try:
            repository, _, tag = name.partition(":")
            client.images.pull(repository, tag=tag)
        except docker.errors.APIError as exc:
            log(f"cannot pull {name}: {exc.explanation or exc}")
            return False
    return True


def stack_images(client: docker.DockerClient, try_registry: bool, log: Log) -> StackImages:
    """The official images where they can be had (`try_registry`), else local ones."""
    if try_registry and registry_images_present(client, log):
        return StackImages({}, f"official images ({OFFICIAL_BASE}, {OFFICIAL_PROMETHEUS}, "
                               f"{OFFICIAL_POSTGRES})")
    with tempfile.TemporaryDirectory(prefix="sglb-images-") as workdir:
        builder = LocalImageBuilder(client, log, Path(workdir))
        debian = builder.debian()
        base = builder.python_base(debian)
        prometheus = builder.prometheus(debian)
        postgres = builder.postgres(debian)
    return StackImages({"GRID_BASE_IMAGE": base, "GRID_PROMETHEUS_IMAGE": prometheus,
                        "GRID_POSTGRES_IMAGE": postgres},
                       f"local images from Debian's packages ({base}, {prometheus}, "
                       f"{postgres}); no registry is used")


def _local(tag: str) -> str:
    """NAME:TAG, however the engine spells it (podman: localhost/NAME:TAG for a built image,
    docker.io/library/NAME:TAG for one tagged through its Docker API)."""
    for prefix in ("localhost/", "docker.io/library/"):
        tag = tag.removeprefix(prefix)
    return tag


def _repository(tag: str) -> str:
    return _local(tag).rsplit(":", 1)[0]


def _epoch(created: str | int | float) -> float:
    if isinstance(created, (int, float)):
        return float(created)
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", created.replace("Z", "+00:00"))
                                  ).timestamp()


def main() -> int:
    client = docker.from_env()
    try:
        images = stack_images(client, False, lambda line: print(line, file=sys.stderr))
    finally:
        client.close()
    for name, value in images.env.items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
