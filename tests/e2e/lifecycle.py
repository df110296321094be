"""One Compose stack's life for an e2e module: the engine's client, stale projects removed, the
images (a registry's or made here), the app image reused or built, and at the end `down -v`
with whatever it left removed by ID. What differs between modules (the compose files, the
settings, how it is brought up) is theirs: `configure` makes the ComposeStack."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker
import docker.errors

from tests.e2e.engine import Engine
from tests.e2e.images import StackImages, app_image_tag, prune_older_tags, stack_images
from tests.e2e.stack import ComposeStack, compose_command, remove_stale_projects


@dataclass(frozen=True)
class Prepared:
    """What a module needs to make its ComposeStack."""

    command: list[str]
    project: str
    client: docker.DockerClient
    images: StackImages
    app_image: str                  # the tag the app services run (GRID_IMAGE)
    base_env: dict[str, str]        # the compose process's PATH, HOME and DOCKER_HOST


@contextlib.contextmanager
def compose_stack(engine: tuple[Engine, str], say: Callable[[str], None],
                  configure: Callable[[Prepared], ComposeStack]) -> Iterator[ComposeStack]:
    found, project = engine
    command = compose_command()
    assert command is not None
    client = docker.DockerClient(base_url=found.docker_host, timeout=300)
    started = time.monotonic()
    built: ComposeStack | None = None
    try:
        client.ping()
        for stale in remove_stale_projects(client):
            say(f"removed {stale}, left behind by a run that was killed")
        images = stack_images(client, try_registry=found.kind == "docker", log=say)
        say(f"images: {images.how}")
        app_image = app_image_tag(str(client.images.get(images.base).id))
        built = configure(Prepared(
            command, project, client, images, app_image,
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "HOME": os.environ.get("HOME", "/root"), "DOCKER_HOST": found.docker_host}))
        try:
            client.images.get(app_image)
            say(f"app image {app_image} reused")
        except docker.errors.ImageNotFound:
            build_started = time.monotonic()
            built.compose("build", "substation")   # the app services share the image
            say(f"app image {app_image} built by compose in "
                f"{time.monotonic() - build_started:.0f} s")
            prune_older_tags(client, app_image)
        built.timings["images ready"] = time.monotonic() - started
        yield built
    finally:
        problems: list[str] = []
        if built is not None:
            try:
                built.down(volumes=True)
            except AssertionError as exc:
                problems.append(str(exc))
            left = built.remove_leftovers()
            if left:
                problems.append(f"`down` left {', '.join(left)} (removed by ID)")
            built.timings["total"] = time.monotonic() - started
            say(f"{project}: " + ", ".join(f"{k} {v:.0f} s" for k, v in built.timings.items()))
        client.close()
        assert not problems, "\n".join(problems)
