# One image for the three services; docker-compose.yml picks the command (without one, the
# image prints how to run each: container/usage.py).
# BASE_IMAGE: any image with Python 3.10+ and its venv module. The default is the official Python
# image; machines that cannot pull it build one from Debian's packages (container/python-base.Dockerfile).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
# pyproject.toml's version; tests/unit/test_compose.py keeps the two equal.
ARG VERSION=0.3.0
LABEL org.opencontainers.image.title="smart-grid-load-balancer" \
      org.opencontainers.image.description="Routes EV charge requests to substations from real-time Prometheus load: the ingress, the balancer and the substation in one image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gridlb ./gridlb
COPY balancer ./balancer
COPY substation ./substation
COPY ingress ./ingress
COPY loadtest ./loadtest
COPY policies ./policies
COPY prometheus ./prometheus
COPY container/substation-entrypoint.sh /usr/local/bin/substation-entrypoint
COPY container/substation-statefulset-entrypoint.sh /usr/local/bin/substation-statefulset-entrypoint
COPY container/http_ok.py /usr/local/bin/http-ok
COPY container/usage.py /usr/local/bin/grid-usage
# A virtualenv: works the same on the official image and on Debian's python3, which refuses
# installs into the system Python (PEP 668).
RUN python3 -m venv /opt/venv \
    && pip install . \
    && useradd --system --uid 10001 --home /data grid \
    && mkdir -p /data && chown grid /data
USER grid
# The ingress, the balancer, a substation (the ports docker-compose.yml gives them).
EXPOSE 8080 8081 9100
CMD ["grid-usage"]
