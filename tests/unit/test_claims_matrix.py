"""The claims matrix: every promise the docs make names the tests that fail if it breaks.

The error tables of docs/api.md (every table with an `error` and a `tested by` column) and the
Failure modes table of docs/failure-modes.md (`what fails` ... `tested by`) name test ids
(`tests/unit/test_x.py::test_y`).
This checks, without importing or running any test (the files are parsed with `ast`):
- every error code in the tables is a member of `gridlb.errors.ErrorCode`, and every member is
  in the tables;
- every named test exists;
- every error code appears, as a string literal or `ErrorCode.X`, in at least one of the tests
  its row names (in the test function itself, its decorators included);
- every row of those tables names at least one test;
- no other Markdown file (the README, the rest of docs/) holds such a table, unchecked.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gridlb.errors import ErrorCode

REPO = Path(__file__).resolve().parents[2]
# Where the claims live (they moved out of the README to keep it short).
CLAIM_FILES = ("docs/api.md", "docs/failure-modes.md")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::\w+(?:::\w+)?)`")
CODE = re.compile(r"`([a-z][a-z0-9_]*)`")


@dataclass
class Row:
    table: str                  # "errors" or "failure modes"
    label: str                  # the row's first cell(s), to name it in messages
    codes: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str) -> Iterable[tuple[list[str], list[list[str]]]]:
    """(header cells, body rows) of each Markdown table."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and \
                re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header = [c.lower() for c in _cells(lines[i])]
            body = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            yield header, body
        else:
            i += 1


def claim_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    for header, body in _tables(text):
        if "tested by" not in header:
            continue
        tested = header.index("tested by")
        if "error" in header:
            col = header.index("error")
            for cells in body:
                rows.append(Row("errors", " ".join(cells[:col + 1]).replace("`", ""),
                                CODE.findall(cells[col]), TEST_ID.findall(cells[tested])))
        elif header[0] == "what fails":
            for cells in body:
                rows.append(Row("failure modes", cells[0].replace("*", ""),
                                tests=TEST_ID.findall(cells[tested])))
    return rows


def collect_test_ids(repo: Path) -> dict[str, ast.AST]:
    """Every test id pytest would collect from tests/ (functions, methods of Test classes,
    and `TestX = Machine.TestCase` state machines), with its syntax tree."""
    nodes: dict[str, ast.AST] = {}
    for path in sorted((repo / "tests").rglob("test_*.py")):
        module = ast.parse(path.read_text(), filename=str(path))
        prefix = path.relative_to(repo).as_posix()
        for node in module.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("test"):
                nodes[f"{prefix}::{node.name}"] = node
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                            item.name.startswith("test"):
                        nodes[f"{prefix}::{node.name}::{item.name}"] = item
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name) and \
                    node.targets[0].id.startswith("Test"):
                nodes[f"{prefix}::{node.targets[0].id}::runTest"] = node
    return nodes


def codes_asserted(node: ast.AST) -> set[str]:
    """Error codes a test names: string literals equal to a code, and `ErrorCode.X`."""
    values = {c.value for c in ErrorCode}
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in values:
            found.add(sub.value)
        elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and \
                sub.value.id == "ErrorCode" and sub.attr in ErrorCode.__members__:
            found.add(ErrorCode[sub.attr].value)
    return found


def check_claims(text: str, nodes: dict[str, ast.AST]) -> list[str]:
    """Every way the matrix in `text` has drifted from the code and the tests."""
    problems: list[str] = []
    rows = claim_rows(text)
    if not any(r.table == "errors" for r in rows):
        problems.append("no error table with a 'tested by' column")
    if not any(r.table == "failure modes" for r in rows):
        problems.append("no Failure modes table with a 'tested by' column")
    members = {c.value for c in ErrorCode}
    listed = {code for r in rows for code in r.codes}
    problems += [f"error code {c!r} is in an error table but not in gridlb.errors.ErrorCode"
                 for c in sorted(listed - members)]
    problems += [f"ErrorCode {c!r} is in no error table" for c in sorted(members - listed)]
    for row in rows:
        where = f'{row.table} row "{row.label}"'
        if not row.tests:
            problems.append(f"{where} names no test")
        missing = [t for t in row.tests if t not in nodes]
        problems += [f"{where} names {t}, which does not exist" for t in missing]
        named = set().union(*(codes_asserted(nodes[t]) for t in row.tests if t in nodes))
        problems += [f"{where}: no test it names asserts {code!r}"
                     for code in row.codes if code in members and code not in named]
    return problems


def claims_text(repo: Path) -> str:
    return "\n".join((repo / name).read_text() for name in CLAIM_FILES)


def test_every_documented_claim_names_existing_tests_that_assert_it() -> None:
    assert check_claims(claims_text(REPO), collect_test_ids(REPO)) == []


def test_each_claims_table_is_where_it_belongs() -> None:
    api, failures = (claim_rows((REPO / name).read_text()) for name in CLAIM_FILES)
    assert api and {r.table for r in api} == {"errors"}
    assert failures and {r.table for r in failures} == {"failure modes"}
    # A table elsewhere would not be checked: every claims table is in CLAIM_FILES.
    others = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    stray = [p.relative_to(REPO).as_posix() for p in others
             if p.relative_to(REPO).as_posix() not in CLAIM_FILES and claim_rows(p.read_text())]
    assert stray == []


# The checker itself must fail when a claim loses its test.
NODES: dict[str, ast.AST] = {
    "tests/unit/test_a.py::test_asserts_code": ast.parse(
        'def test_asserts_code():\n    assert body["error"] == "no_capacity"\n').body[0],
    "tests/unit/test_a.py::test_uses_enum": ast.parse(
        "def test_uses_enum():\n    assert e == ErrorCode.OUTCOME_UNKNOWN\n").body[0],
    "tests/unit/test_a.py::test_unrelated": ast.parse(
        "def test_unrelated():\n    assert 1 + 1 == 2\n").body[0],
}
ERRORS = """\
| status | error | when | tested by |
| --- | --- | --- | --- |
| 503 | `no_capacity` | full | `tests/unit/test_a.py::test_asserts_code` |
| 503 | `outcome_unknown` | unknown | `tests/unit/test_a.py::test_uses_enum` |
"""
FAILURES = """\
| what fails | what happens | recovery | tested by |
| --- | --- | --- | --- |
| **Prometheus down** | degraded | automatic | `tests/unit/test_a.py::test_unrelated` |
"""


def problems_of(text: str) -> list[str]:
    # Only these two codes exist for the synthetic tables; the rest are reported missing.
    return [p for p in check_claims(text, NODES)
            if not p.startswith("ErrorCode ") or "'no_capacity'" in p or "'outcome_unk" in p]


def test_the_checker_accepts_a_complete_matrix() -> None:
    assert problems_of(ERRORS + "\n" + FAILURES) == []


def test_the_checker_fails_when_a_row_loses_its_test() -> None:
    text = ERRORS.replace("`tests/unit/test_a.py::test_uses_enum`", "") + "\n" + \
        FAILURES.replace("`tests/unit/test_a.py::test_unrelated`", "")
    assert problems_of(text) == [
        'errors row "503 outcome_unknown" names no test',
        'errors row "503 outcome_unknown": no test it names asserts \'outcome_unknown\'',
        'failure modes row "Prometheus down" names no test',
    ]


def test_the_checker_fails_when_a_named_test_does_not_assert_the_code() -> None:
    text = ERRORS.replace("test_uses_enum`", "test_unrelated`") + "\n" + FAILURES
    assert problems_of(text) == [
        'errors row "503 outcome_unknown": no test it names asserts \'outcome_unknown\'']


def test_the_checker_fails_on_a_test_that_does_not_exist() -> None:
    text = ERRORS + "\n" + FAILURES.replace("test_unrelated`", "test_gone`")
    assert problems_of(text) == [
        'failure modes row "Prometheus down" names tests/unit/test_a.py::test_gone, which '
        "does not exist"]


def test_the_checker_fails_on_a_code_the_enum_does_not_have_and_on_a_missing_member() -> None:
    text = ERRORS.replace("`no_capacity` |", "`no_capacity`, `no_such_code` |") + "\n" + \
        FAILURES
    assert problems_of(text) == [
        "error code 'no_such_code' is in an error table but not in gridlb.errors.ErrorCode"]
    complete = check_claims(ERRORS + "\n" + FAILURES, NODES)
    assert "ErrorCode 'unauthorized' is in no error table" in complete


def test_the_checker_needs_both_tables() -> None:
    assert "no Failure modes table with a 'tested by' column" in check_claims(ERRORS, NODES)
    assert "no error table with a 'tested by' column" in check_claims(FAILURES, NODES)


def test_tests_are_found_without_importing_them() -> None:
    nodes = collect_test_ids(REPO)
    assert "tests/unit/test_claims_matrix.py::test_tests_are_found_without_importing_them" \
        in nodes
    assert "tests/unit/test_placement_properties.py::TestPlacementProtocol::runTest" in nodes
    assert codes_asserted(
        nodes["tests/unit/test_ingress.py::test_a_bad_idempotency_key_is_400"]) == \
        {"invalid_idempotency_key"}
