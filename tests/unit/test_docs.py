"""The docs are part of the product: keep them true.

Three checks over README.md and docs/*.md:

(a) docs/api.md documents every name in ``minibox.__all__`` (as a heading or
    in backticks) and every public field of the data classes a caller
    builds or reads (Spec, Limits, Mount, IdMap, Result, Usage, Stats), so
    adding a field without documenting it fails here;
(b) every fenced code block whose info string is exactly ``python runnable``
    is executed in a fresh interpreter (the venv's python, as root, 120 s)
    and must exit 0 -- and must leave no mount, temp file or state file
    behind;
(c) every relative link points to a file that exists, and every path of the
    repository written in backticks (`src/...`, `csrc/...`, `tests/...`,
    `bench/...`, `docs/...`) names a file or directory that exists, so a
    moved module cannot leave a chapter pointing at nothing;
(d) every chapter carries a ``sh try-it`` block (run, as root, by
    tests/integration/test_docs_try_it.py);
(e) the floor plan in docs/README.md names every module of src/minibox.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import minibox

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
API = DOCS / "api.md"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
RUNNABLE_TIMEOUT = 120


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


# --- Markdown helpers ---------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Fenced code blocks (CommonMark: ``` or ~~~, closed by a fence at least as long)."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) \
                    and not close["info"].strip():
                break
            body.append(lines[i])
            i += 1
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def prose(path: Path) -> str:
    """The text outside fenced code blocks (links inside code are not links)."""
    text = path.read_text().splitlines()
    inside: set[int] = set()
    for block in fenced_blocks(path):
        n = block.code.count("\n")
        inside.update(range(block.line - 1, block.line + n + 1))
    return "\n".join(line if i not in inside else "" for i, line in enumerate(text))


# --- (a) the API reference names everything ----------------------------------------------


def _api_tokens() -> tuple[str, set[str]]:
    text = prose(API)
    headings = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    spans = set(re.findall(r"`([^`\n]+)`", text))
    return headings, spans


def _documented(name: str, headings: str, spans: set[str]) -> bool:
    word = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
    return bool(word.search(headings)) or any(word.search(span) for span in spans)


def test_api_reference_names_every_public_name() -> None:
    headings, spans = _api_tokens()
    missing = [name for name in minibox.__all__ if not _documented(name, headings, spans)]
    assert not missing, f"docs/api.md does not document: {', '.join(missing)}"


@pytest.mark.parametrize("cls", [minibox.Spec, minibox.Limits, minibox.Mount, minibox.IdMap,
                                 minibox.Result, minibox.Usage, minibox.Stats],
                         ids=lambda c: c.__name__)
def test_api_reference_names_every_field(cls: type) -> None:
    _, spans = _api_tokens()
    fields = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    missing = [f for f in fields if not _documented(f, "", spans)]
    assert not missing, f"docs/api.md does not mention {cls.__name__} field(s) in backticks: {', '.join(missing)}"


# --- (b) runnable blocks run --------------------------------------------------------------


def runnable_blocks() -> list[Block]:
    return [b for path in doc_files() for b in fenced_blocks(path) if b.info == "python runnable"]


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _state_files() -> set[str]:
    """Files (not directories) under minibox's runtime directory: one per live sandbox."""
    where = os.environ.get("MINIBOX_RUNTIME_DIR")
    found: set[str] = set()
    if where and os.path.isdir(where):
        for parent, _dirs, files in os.walk(where):
            found.update(os.path.join(parent, f) for f in files)
    return found


def test_there_are_runnable_blocks() -> None:
    assert len(runnable_blocks()) >= 2


@pytest.mark.skipif(os.geteuid() != 0, reason="runnable doc blocks create namespaces and cgroups: needs root")
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.name)
def test_runnable_block(block: Block, tmp_path: Path) -> None:
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    mounts_before, state_before = _mount_points(), _state_files()
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([python, "-c", block.code], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=RUNNABLE_TIMEOUT)
    assert proc.returncode == 0, (
        f"{block.name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert not list(scratch.iterdir()), f"{block.name} left temp files: {list(scratch.iterdir())}"
    assert _mount_points() == mounts_before, f"{block.name} changed the host's mount table"
    assert _state_files() <= state_before, f"{block.name} left state files: {_state_files() - state_before}"


# --- (c) relative links resolve ------------------------------------------------------------

_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def relative_links(path: Path) -> list[tuple[int, str]]:
    text = prose(path)
    # inline code is not a link either
    text = re.sub(r"`[^`\n]*`", "", text)
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in [*_INLINE_LINK.finditer(line), *_REF_LINK.finditer(line)]:
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http:, https:, mailto:, anchors
            found.append((lineno, target))
    return found


def test_relative_links_resolve() -> None:
    dangling = []
    for path in doc_files():
        for lineno, target in relative_links(path):
            file_part = target.split("#", 1)[0]
            if not (path.parent / file_part).exists():
                dangling.append(f"{path.relative_to(REPO)}:{lineno}: {target}")
    assert not dangling, "dangling relative links:\n  " + "\n  ".join(dangling)


# --- (c') repository paths in backticks exist -------------------------------------------------

_REPO_PATH = re.compile(r"`((?:src|csrc|tests|bench|docs)/[^`\s]*)`")


def repository_paths(path: Path) -> list[tuple[int, str]]:
    """`src/minibox/x.py`, `tests/unit/test_y.py::test_z`, `csrc/spawn.c:120` -> the file part."""
    found = []
    for lineno, line in enumerate(prose(path).splitlines(), 1):
        for m in _REPO_PATH.finditer(line):
            target = re.split(r"::|:(?=\d)|[(#]", m.group(1), maxsplit=1)[0].rstrip(".,;:")
            if any(ch in target for ch in "*{}<>$"):
                continue  # a pattern or a placeholder, not a path
            found.append((lineno, target))
    return found


def test_there_are_repository_paths_to_check() -> None:
    assert sum(len(repository_paths(p)) for p in doc_files()) >= 20


def test_repository_paths_exist() -> None:
    missing = [f"{path.relative_to(REPO)}:{lineno}: {target}"
               for path in doc_files() for lineno, target in repository_paths(path)
               if not (REPO / target).exists()]
    assert not missing, "paths in backticks that are not in the repository:\n  " + "\n  ".join(missing)


# --- (d) every chapter has a try-it block -----------------------------------------------------

CHAPTERS_WITH_TRY_IT = ("spawn.md", "namespaces.md", "rootfs.md", "cgroups.md", "hardening.md", "vm.md",
                        "networking.md")


def try_it_blocks() -> list[Block]:
    return [b for path in doc_files() for b in fenced_blocks(path) if b.info == "sh try-it"]


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_TRY_IT)
def test_chapter_has_a_try_it_block(chapter: str) -> None:
    blocks = [b for b in try_it_blocks() if b.path.name == chapter]
    assert blocks, f"docs/{chapter} has no ```sh try-it``` block rebuilding its step with the plain tools"


# --- (e) the floor plan in docs/README.md names every module -------------------------------------


def test_floor_plan_names_every_module() -> None:
    tree = next(b.code for b in fenced_blocks(DOCS / "README.md") if b.code.startswith("src/minibox/"))
    package = REPO / "src" / "minibox"
    missing = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name != "__init__.py" and p.name not in tree]
    missing += [str(d.relative_to(package)) + "/" for d in sorted(package.rglob("*"))
                if d.is_dir() and (d / "__init__.py").exists() and f"{d.name}/" not in tree]
    assert not missing, "docs/README.md's floor plan does not name: " + ", ".join(missing)
