"""The README's figures are a generated block (bench/update_readme.py), dated, not typed by hand."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import update_readme  # noqa: E402  (bench/ is not a package)


def test_the_readme_has_one_generated_block_with_its_date_and_machine() -> None:
    text = update_readme.README.read_text()
    start, end = update_readme.block_bounds(text)
    block = text[start:end]
    assert re.search(r"Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC on host kernel \S+; \d+ CPUs", block), block
    assert "| start-to-exit |" in block and "| memory, idle box |" in block
    outside = text[:start] + text[end:]
    assert not re.search(r"~\d+(\.\d+)? ?(ms|s)\b", outside), "a hand-typed figure outside the generated block"


def test_replace_block_touches_only_the_block() -> None:
    text = f"intro\n{update_readme.BEGIN}\nold\n{update_readme.END}\noutro\n"
    new = update_readme.replace_block(text, "| new |")
    assert new == f"intro\n{update_readme.BEGIN}\n| new |\n{update_readme.END}\noutro\n"
    try:
        update_readme.block_bounds("no markers")
    except ValueError as e:
        assert "exactly once" in str(e)
    else:
        raise AssertionError("a README without the markers must be refused")
