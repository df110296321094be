"""The ingress's stores (the contract: ingress/store.py): SQLite by default, PostgreSQL when a
`postgresql://` store URL is given. The PostgreSQL driver is imported only then: an ingress on
SQLite never loads psycopg."""

from __future__ import annotations

from ingress.config import IngressConfig
from ingress.store import IngressStore
from ingress.stores.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


async def open_store(config: IngressConfig) -> IngressStore:
    if config.store_url:
        from ingress.stores.postgres import PostgresStore
        return await PostgresStore.open(
            config.store_url, config.durability, pool_size=config.store_pool_size,
            key_ttl_s=config.key_ttl_s, max_keys=config.max_keys)
    return SQLiteStore(config.store_path, config.durability, key_ttl_s=config.key_ttl_s,
                       max_keys=config.max_keys)


def describe_store(config: IngressConfig) -> str:
    """Which store, for the start-up line: the PostgreSQL URL without its password."""
    if config.store_url:
        from ingress.stores.postgres import redact
        return f"postgresql:{redact(config.store_url)}"
    return f"sqlite:{config.store_path}"
