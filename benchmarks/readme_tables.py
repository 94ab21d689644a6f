"""Put the committed benchmark tables into the README and the documentation pages, so no
result there is typed by hand.

A block in ``README.md`` or a ``docs/`` page

    <!-- results: benchmarks/results/compress.md 1 -->
    ...
    <!-- /results -->

is replaced by the first markdown table of ``benchmarks/results/compress.md`` (the file a
benchmark script wrote from its own measurements; ``2`` would take the second table).

    python benchmarks/readme_tables.py           # rewrite the blocks of every page
    python benchmarks/readme_tables.py --check   # exit 1 if a page has drifted

``tests/test_docs.py`` runs the check.
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
            raise ValueError(f"{source} has {len(found)} tables; a page asks for table {index}")
        return f"{match[1]}{found[index - 1]}\n{match[5]}"

    return BLOCK.sub(fill, readme)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold results blocks: the README and every documentation page."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page drifted")
    args = parser.parse_args()
    drifted = []
    for path in pages():
        current = path.read_text()
        wanted = render(current)
        if wanted == current:
            continue
        if args.check:
            drifted.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(wanted)
            print(f"{path.relative_to(ROOT)}: {len(BLOCK.findall(current))} result tables filled")
    if drifted:
        print(f"{', '.join(drifted)}: result tables differ from benchmarks/results; run "
              "python benchmarks/readme_tables.py")  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    main()
