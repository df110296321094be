"""The migration rule (ingress/stores/migrations.py), as plain data."""

from __future__ import annotations

import pytest

from ingress.stores.migrations import Migration, SchemaTooNew, to_apply

M = [Migration(1, "one", ("a",)), Migration(2, "two", ("b",)), Migration(5, "five", ("c",))]


def test_only_the_versions_not_applied_are_applied_in_order() -> None:
    assert to_apply(M, set(), "db") == M
    assert to_apply(M, {1}, "db") == M[1:]
    assert to_apply(M, {1, 2, 5}, "db") == []
    assert to_apply(M, {2}, "db") == [M[0], M[2]]     # a gap is filled, not skipped


def test_a_version_this_release_does_not_know_is_refused() -> None:
    with pytest.raises(SchemaTooNew, match=r"^db: schema version 9 was applied by a newer "
                                           r"release of the ingress \(this one knows up to 5\)"):
        to_apply(M, {1, 2, 5, 6, 9}, "db")


@pytest.mark.parametrize("versions", [[2, 1], [1, 1], [0, 1]])
def test_versions_must_be_unique_increasing_and_positive(versions: list[int]) -> None:
    with pytest.raises(ValueError, match="unique, increasing and >= 1"):
        to_apply([Migration(v, "m", ()) for v in versions], set(), "db")
