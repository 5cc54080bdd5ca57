"""Small helpers the demos share: headings, narration, and source pointers."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

_COLOR = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


def _style(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def heading(text: str) -> None:
    print()
    print(_style("1", f"== {text} =="))


def say(text: str) -> None:
    print(text)


def show(label: str, value: object) -> None:
    print(f"  {_style('36', label)}: {value}")


def source_of(obj: Any) -> str:
    """'minibox/container/rootfs.py:120' for a function or class: where to read on."""
    try:
        path = inspect.getsourcefile(obj) or "?"
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return "?"
    marker = os.sep + "minibox" + os.sep
    short = path[path.rindex(marker) + 1:] if marker in path else path
    return f"{short}:{line}"


def pointer(text: str, obj: Any) -> None:
    print(f"  {_style('2', '-> source:')} {source_of(obj)}  ({text})")
