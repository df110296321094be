"""`make bench`'s own output: its help says what each part costs in time, and its tables show
numbers as a person writes them."""

from __future__ import annotations

import re

import pytest

from bench.__main__ import PART_INFO, PARTS, main
from bench.tables import plain, table


def test_the_help_says_how_long_each_part_takes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert set(PART_INFO) == set(PARTS)
    for part in PARTS:
        assert re.search(rf"^  {part} +about \d+(\.5)? (s|min) \(--quick: \d+(\.5)? (s|min)\)$",
                         text, flags=re.MULTILINE), part
    assert re.search(r"^  all +about 29\.5 min \(--quick: 9 min\)$", text, flags=re.MULTILINE)


@pytest.mark.parametrize(("value", "shown"), [
    (None, "-"), (float("nan"), "-"), (float("inf"), "inf"), (True, "yes"), (False, "no"),
    (3, "3"), (100_000, "100,000"), (2390.0, "2,390"), (4310.5, "4,310"), (239.4, "239"),
    (23.94, "23.9"), (2.394, "2.39"), (0.5, "0.500"), (0.0123, "0.0123"),
    (0.000123456, "0.000123"), (0.0, "0"), (-0.05, "-0.0500"), (9.9999, "10.0"),
    (0.999999, "1.00"), (99.99, "100"), ("least-load", "least-load"),
])
def test_a_number_is_written_plainly(value: object, shown: str) -> None:
    assert plain(value) == shown


def test_a_table_shows_no_none_and_no_exponent() -> None:
    rows: list[dict[str, object]] = [
        {"substations": 1000, "p50_us": 372.0, "p99_us": 4310.0, "target_p99_us": None,
         "met": None},
        {"substations": 10, "p50_us": 0.000012, "p99_us": float("nan"), "target_p99_us": 50.0,
         "met": True}]
    text = table(rows)
    assert "None" not in text and "nan" not in text and not re.search(r"\de[+-]\d", text)
    assert text.splitlines()[2] == "| 1,000 | 372 | 4,310 | - | - |"
    assert text.splitlines()[3] == "| 10 | 0.0000120 | - | 50.0 | yes |"
