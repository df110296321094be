# PostgreSQL from Debian's package, for machines that cannot pull the official postgres image
# (see python-base.Dockerfile). Same interface as the official image where docker-compose.postgres.yml
# uses it: POSTGRES_USER, POSTGRES_PASSWORD (required), POSTGRES_DB; data in
# /var/lib/postgresql/data; the command `postgres` with its -c flags; pg_isready for the
# healthcheck; not run as root.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data \
    && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
