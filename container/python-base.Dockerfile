# A Python base image made from Debian's packages, for machines that cannot pull from a registry
# (tests/e2e/images.py builds it; docs/operations.md's "podman route" shows how to use it). It stands in
# for the official python image: `python3` with venv, and a wheelhouse that pip installs from
# instead of PyPI (PyPI is not reachable from containers there; Debian's mirror is).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY wheelhouse /wheelhouse
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse
