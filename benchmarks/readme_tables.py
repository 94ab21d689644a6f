"""Put the committed benchmark tables into the README, so no result there is typed by hand.

A README block

    <!-- results: benchmarks/results/compress.md 1 -->
    ...
    <!-- /results -->

is replaced by the first markdown table of ``benchmarks/results/compress.md`` (the file a
benchmark script wrote from its own measurements; ``2`` would take the second table).

    python benchmarks/readme_tables.py           # rewrite the README's blocks
    python benchmarks/readme_tables.py --check   # exit 1 if the README has drifted

``tests/test_readme.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- results: (?P<file>\S+) (?P<index>\d+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S
)


def tables(markdown: str) -> list[str]:
    """The markdown tables of a document: runs of lines that start with ``|``."""
    found, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    if current:
        found.append("\n".join(current))
    return found


def render(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every results block filled from its file."""

    def fill(match: re.Match[str]) -> str:
        source = root / match["file"]
        found = tables(source.read_text())
        index = int(match["index"])
        if not 1 <= index <= len(found):
            raise ValueError(f"{source} has {len(found)} tables; the README asks for table {index}")
        return f"{match[1]}{found[index - 1]}\n{match[5]}"

    return BLOCK.sub(fill, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README drifted")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md's result tables differ from benchmarks/results; run "
                  "python benchmarks/readme_tables.py")  # fmt: skip
            sys.exit(1)
        return
    path.write_text(wanted)
    print(f"{path}: {len(BLOCK.findall(current))} result tables filled")


if __name__ == "__main__":
    main()
