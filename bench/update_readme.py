"""bench/update_readme.py: the README's figures come from a measurement, not from a keyboard.

Runs ``minibox compare`` (the same code as the command: container and
microVM, the same Spec, measured here and now) and rewrites the block of
README.md between the two markers below with its 80-column table in
Markdown, the date and the machine.  Nothing else in the README is touched.

    sudo .venv/bin/python bench/update_readme.py                 # measure (about a minute), rewrite
    sudo .venv/bin/python bench/update_readme.py --runs 20 --plot docs/compare.svg
    .venv/bin/python bench/update_readme.py --check               # is the block well formed? (CI)

Run it on a quiet machine: the figures are medians with their p25-p75
spread, and another tenant's burst widens the spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN = "<!-- figures: begin (bench/update_readme.py writes this block; do not edit it by hand) -->"
END = "<!-- figures: end -->"


def block_bounds(text: str) -> tuple[int, int]:
    """(start, end) offsets of the block's contents between the markers; ValueError if malformed."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md must contain each marker exactly once: {BEGIN!r} ... {END!r}")
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    if end < start:
        raise ValueError("the end marker comes before the begin marker")
    return start, end


def replace_block(text: str, contents: str) -> str:
    start, end = block_bounds(text)
    return text[:start] + "\n" + contents.strip("\n") + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="start-to-exit runs per kind (default 10)")
    parser.add_argument("--density", type=int, default=4, help="idle sandboxes per kind (default 4)")
    parser.add_argument("--plot", metavar="FILE", help="also draw the distributions into FILE (.svg/.png)")
    parser.add_argument("--check", action="store_true", help="only check that README.md has one block")
    args = parser.parse_args(argv)
    text = README.read_text()
    try:
        block_bounds(text)
    except ValueError as e:
        print(f"update_readme: {e}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    from minibox.compare import Progress, measure, render_markdown

    progress = Progress(enabled=True)
    try:
        report = measure(args.runs, args.density, progress=progress)
    finally:
        progress.close()
    table = render_markdown(report)
    contents = f"{table}\n\n(`minibox compare` measures the same on your machine; `--wide` says how.)"
    README.write_text(replace_block(text, contents))
    print(f"README.md: figures of {report.date} written", file=sys.stderr)
    if args.plot:
        from minibox.compare.plot import plot

        plot(report, args.plot)
        print(f"{args.plot}: drawn", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
