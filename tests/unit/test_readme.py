"""The README stays a newcomer's page: short, lines a person can read, a quickstart of exactly
`make up` and `make test`, and links that lead to files that exist. The reference (every error
code, the failure modes, operations) lives in docs/."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 200
MAX_WIDTH = 160          # outside code blocks, where a long command may need the room
QUICKSTART = ["make up", "make test"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside ``` code blocks."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def section(text: str, heading: str) -> str:
    """The text under `## heading`, up to the next heading of that level or above."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", text,
                      flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def commands(text: str) -> list[str]:
    """The command lines of the code blocks in `text`, without comments and blank lines."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        command = line.split("#", 1)[0].strip()
        if fenced and command:
            out.append(command)
    return out


def readme_problems(text: str, repo: Path) -> list[str]:
    problems: list[str] = []
    lines = text.splitlines()
    if len(lines) >= MAX_LINES:
        problems.append(f"{len(lines)} lines; keep it under {MAX_LINES} (move reference to docs/)")
    problems += [f"line {n} has {len(line)} characters (at most {MAX_WIDTH} outside code)"
                 for n, line in prose_lines(text) if len(line) > MAX_WIDTH]
    quickstart = commands(section(text, "Quickstart"))
    if quickstart != QUICKSTART:
        problems.append(f"the quickstart's commands are {quickstart}, not {QUICKSTART}")
    for n, line in prose_lines(text):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (repo / target.split("#", 1)[0]).exists():
                problems.append(f"line {n} links to {target}, which does not exist")
    return problems


def test_the_readme_is_short_readable_and_starts_with_two_commands() -> None:
    assert readme_problems((REPO / "README.md").read_text(), REPO) == []


GOOD = """\
# Title

## Quickstart

```sh
make up      # starts everything
make test
```

See [the API](docs/api.md) and [a section](#quickstart) and [a site](https://example.org).

## Next
"""


def test_the_checker_accepts_a_good_readme() -> None:
    assert readme_problems(GOOD, REPO) == []


def test_the_checker_refuses_a_long_readme_and_a_wide_line() -> None:
    long = GOOD + "text\n" * MAX_LINES
    assert readme_problems(long, REPO) == [
        f"{len(long.splitlines())} lines; keep it under 200 (move reference to docs/)"]
    wide = GOOD + "| a | " + "x" * 200 + " |\n"
    assert readme_problems(wide, REPO) == [
        f"line {len(wide.splitlines())} has 208 characters (at most 160 outside code)"]
    # A long command inside a code block is allowed.
    assert readme_problems(GOOD + "```sh\n" + "x" * 200 + "\n```\n", REPO) == []


def test_the_checker_wants_exactly_the_two_quickstart_commands() -> None:
    three = GOOD.replace("make test\n", "make test\nmake loadtest\n")
    assert readme_problems(three, REPO) == [
        "the quickstart's commands are ['make up', 'make test', 'make loadtest'], not "
        "['make up', 'make test']"]
    assert readme_problems(GOOD.replace("## Quickstart", "## Start"), REPO) == [
        "the quickstart's commands are [], not ['make up', 'make test']"]


def test_the_checker_finds_a_broken_link() -> None:
    broken = GOOD.replace("docs/api.md", "docs/gone.md")
    assert readme_problems(broken, REPO) == ["line 10 links to docs/gone.md, which does not exist"]


def test_the_docs_link_to_files_that_exist() -> None:
    broken = []
    for path in sorted((REPO / "docs").glob("*.md")):
        for n, line in prose_lines(path.read_text()):
            for target in _LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (path.parent / target.split("#", 1)[0]).exists():
                    broken.append(f"{path.name}:{n}: {target}")
    assert broken == []
