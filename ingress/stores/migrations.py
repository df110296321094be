"""Versioned schema migrations, as plain data and one rule.

Each store keeps a `schema_migrations` table of the versions it applied (version, name, when).
On start it applies, in order and each in its own transaction, the versions it has not: the
schema only ever moves forward, and no table is dropped on start (data a release no longer reads
stays where it was, for an operator to remove). A database that has a version this code does not
know was written by a newer release: it is refused rather than written with an older schema's
assumptions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release."""


def to_apply(migrations: Sequence[Migration], applied: Collection[int], where: str
             ) -> list[Migration]:
    """The migrations not applied yet, in version order; SchemaTooNew when `applied` holds a
    version no migration has. `where` names the database in the message."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be unique, increasing and >= 1: {versions}")
    unknown = sorted(set(applied) - set(versions))
    if unknown:
        raise SchemaTooNew(
            f"{where}: schema version {unknown[-1]} was applied by a newer release of the "
            f"ingress (this one knows up to {versions[-1] if versions else 0}); run that release "
            "or restore a backup")
    return [m for m in migrations if m.version not in applied]
