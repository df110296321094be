"""The score of the last `make mutate` run, per module, from mutmut's result files.

Reads `mutants/**/*.py.meta` (mutmut 3 keeps each mutant's exit code there) and the survivors
docs/mutation.md lists (a row "| `mutant name` | equivalent | why |", or "not killed"). Prints a
Markdown table (score = killed / (mutants - equivalent)), every survivor the doc does not list
and every listed one that no longer survives; exits 1 when a module is below the target or the
list is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mutmut 3's exit codes: 1 and 3 are failed test runs (killed); a timeout or a crash of the
# mutated code is detected too. 0 is a survivor, 5/33 a mutant no test reaches.
KILLED = {1, 3, 24, -24, 152, 255, 36, -9, -11}
NO_TESTS = {5, 33}
SURVIVOR_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([a-z ]+?)\s*\|", re.IGNORECASE)


def listed_survivors(doc: Path) -> dict[str, str]:
    """mutant name -> verdict ("equivalent", or "not killed" with a reason) from the doc."""
    if not doc.exists():
        return {}
    return {m.group(1): m.group(2).lower() for line in doc.read_text().splitlines()
            if (m := SURVIVOR_ROW.match(line))}


def results(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """module (dotted) -> mutant name -> exit code (None: not run)."""
    by_module: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        module = meta.relative_to(mutants_dir).as_posix().removesuffix(".py.meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            by_module[module.replace("/", ".")] = codes
    return by_module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutants", type=Path, default=REPO / "mutants")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "mutation.md")
    parser.add_argument("--target", type=float, default=90.0,
                        help="the lowest acceptable score in percent")
    args = parser.parse_args()
    listed = listed_survivors(args.doc)
    known = {name for name, verdict in listed.items() if verdict == "equivalent"}
    by_module = results(args.mutants)
    if not by_module:
        print(f"no mutmut results under {args.mutants}: run `make mutate` first")
        return 1
    print("| module | mutants | killed | survived | of which equivalent | no test reaches "
          "| not run | score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    unexplained: list[str] = []
    below = False
    for module, codes in by_module.items():
        status = Counter("not run" if c is None else "killed" if c in KILLED
                         else "no tests" if c in NO_TESTS else "survived" if c == 0
                         else "other" for c in codes.values())
        survivors = sorted(k for k, c in codes.items() if c is not None and c not in KILLED)
        equivalent = [s for s in survivors if s in known]
        unexplained += [s for s in survivors if s not in listed]
        judged = len(codes) - status["not run"] - len(equivalent)
        score = 100.0 * status["killed"] / judged if judged else 0.0
        below = below or status["not run"] > 0 or score < args.target
        print(f"| `{module}` | {len(codes)} | {status['killed']} | "
              f"{status['survived'] + status['other']} | {len(equivalent)} | "
              f"{status['no tests']} | {status['not run']} | {score:.1f} % |")
    results_of = {name: code for codes in by_module.values() for name, code in codes.items()}
    stale = sorted(name for name in listed if name.split(".x")[0] in by_module
                   and results_of.get(name) in KILLED | {None, *NO_TESTS})
    if stale:
        print("\nListed as equivalent in docs/mutation.md but not a survivor of the last run "
              "(the code changed: update the list):")
        print("\n".join(f"  {name}" for name in stale))
    if unexplained:
        print("\nSurvivors not listed in docs/mutation.md "
              "(`.venv/bin/mutmut show NAME` shows the change):")
        print("\n".join(f"  {name}" for name in unexplained))
    return 1 if below or stale else 0


if __name__ == "__main__":
    sys.exit(main())
