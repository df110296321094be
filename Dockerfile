# One image for the three services; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gridlb ./gridlb
COPY balancer ./balancer
COPY substation ./substation
COPY ingress ./ingress
COPY loadtest ./loadtest
COPY policies ./policies
COPY prometheus ./prometheus
RUN pip install . \
    && useradd --system --uid 10001 --home /data grid \
    && mkdir -p /data && chown grid /data
USER grid
