"""The run path's bytecode bundle (minibox/_bundle.py): served when current, never when stale.

A bundle is built from a small package in a temporary directory; each test
imports from it with the bundle's finder first on ``sys.meta_path``, as the
``minibox`` console script does, and checks which code ran.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox import _bundle, _entry


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """``bpkg`` (a package) with ``bpkg.mod`` and ``bpkg.sub.inner``, importable from ``tmp_path/lib``; a
    bundle of the submodules at ``tmp_path/bundle``.  Everything is unimported and unhooked afterwards."""
    root = tmp_path / "lib" / "bpkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "mod.py").write_text("VALUE = 'from the source as built'\n")
    (root / "sub" / "__init__.py").write_text("SUB = 1\n")
    (root / "sub" / "inner.py").write_text("from bpkg.mod import VALUE\n")
    _bundle.build({name: str(root / rel) for name, rel in
                   (("bpkg.mod", "mod.py"), ("bpkg.sub", "sub/__init__.py"), ("bpkg.sub.inner", "sub/inner.py"))},
                  str(tmp_path / "bundle"))
    meta_path, path = list(sys.meta_path), list(sys.path)
    sys.path.insert(0, str(tmp_path / "lib"))
    try:
        yield root
    finally:
        sys.meta_path[:], sys.path[:] = meta_path, path
        for name in [name for name in sys.modules if name == "bpkg" or name.startswith("bpkg.")]:
            del sys.modules[name]


def _import(name: str) -> object:
    __import__(name)
    return sys.modules[name]


def test_a_current_bundle_serves_its_modules_with_their_source_paths(package: Path, tmp_path: Path) -> None:
    assert _bundle.load(str(tmp_path / "bundle"))
    inner = _import("bpkg.sub.inner")
    assert inner.VALUE == "from the source as built"  # type: ignore[attr-defined]
    for name, source in (("bpkg.sub.inner", "sub/inner.py"), ("bpkg.mod", "mod.py"), ("bpkg.sub", "sub/__init__.py")):
        module = sys.modules[name]
        assert isinstance(module.__spec__.loader, _bundle.BundleFinder), name  # type: ignore[union-attr]
        assert module.__file__ == str(package / source)  # tracebacks show the real file
    assert sys.modules["bpkg.sub"].__path__ == [str(package / "sub")]  # a package, as the path finder makes it
    assert not isinstance(sys.modules["bpkg"].__spec__.loader, _bundle.BundleFinder)  # top level: via sys.path


@pytest.mark.parametrize("edit", ["longer", "same size, newer", "same size, older"])
def test_an_edited_source_wins_over_the_bundle(package: Path, tmp_path: Path, edit: str) -> None:
    mod = package / "mod.py"
    built = mod.stat()
    if edit == "longer":
        mod.write_text("VALUE = 'edited after the bundle was built'\n")
    else:  # as an editor or a checkout might: same length, another time (even an earlier one)
        mod.write_text("VALUE = 'from the source as BUILT'\n")
        assert mod.stat().st_size == built.st_size
        delta = 1 if edit == "same size, newer" else -3600
        os.utime(mod, ns=(built.st_atime_ns, built.st_mtime_ns + delta))
    assert _bundle.load(str(tmp_path / "bundle"))
    value = _import("bpkg.mod").VALUE  # type: ignore[attr-defined]
    assert value != "from the source as built"
    assert not isinstance(sys.modules["bpkg.mod"].__spec__.loader, _bundle.BundleFinder)
    assert isinstance(_import("bpkg.sub").__spec__.loader, _bundle.BundleFinder)  # the others still served


def test_a_removed_source_is_not_importable_from_the_bundle(package: Path, tmp_path: Path) -> None:
    (package / "mod.py").unlink()
    assert _bundle.load(str(tmp_path / "bundle"))
    with pytest.raises(ModuleNotFoundError):
        _import("bpkg.mod")


def test_a_package_found_elsewhere_gets_its_own_modules(package: Path, tmp_path: Path) -> None:
    # PYTHONPATH puts another bpkg first: its mod is imported, not the bundle's
    other = tmp_path / "other" / "bpkg"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "mod.py").write_text("VALUE = 'the other checkout'\n")
    sys.path.insert(0, str(tmp_path / "other"))
    assert _bundle.load(str(tmp_path / "bundle"))
    assert _import("bpkg.mod").VALUE == "the other checkout"  # type: ignore[attr-defined]


@pytest.mark.parametrize("content", [b"", b"not marshal at all", marshal.dumps((b"\0\0\r\n", 0, {})),
                                     marshal.dumps((_bundle.MAGIC_NUMBER, 2, {})), marshal.dumps([1, 2])])
def test_an_unusable_bundle_is_ignored(tmp_path: Path, content: bytes) -> None:
    # empty, corrupt, another bytecode version, another -O level, another shape: no finder at all
    (tmp_path / "bundle").write_bytes(content)
    before = list(sys.meta_path)
    assert not _bundle.load(str(tmp_path / "bundle"))
    assert not _bundle.load(str(tmp_path / "missing"))
    assert sys.meta_path == before


def test_the_console_script_runs_with_without_and_with_a_stale_bundle(tmp_path: Path) -> None:
    # The minibox script as _entry writes it: it loads _bundle.py by path and the bundle beside it.
    src = tmp_path / "src"
    (src / "minibox").mkdir(parents=True)
    (src / "minibox" / "_bundle.py").write_text(Path(_bundle.__file__).read_text())
    (src / "minibox" / "__init__.py").write_text("")
    (src / "minibox" / "cli.py").write_text("def entry_point():\n    import sys\n"
                                            "    print(type(sys.modules[__name__].__spec__.loader).__name__)\n")
    script = tmp_path / "minibox"
    bundle_module = str(src / "minibox" / "_bundle.py")
    script.write_text(_entry.script_text(sys.executable, "minibox.cli", [str(src)], bundle_module))
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def loader() -> str:
        return subprocess.run([str(script)], capture_output=True, text=True, env=env, check=True).stdout.strip()

    assert loader() == "SourceFileLoader"  # no bundle built yet: the ordinary import
    built = _bundle.build({"minibox.cli": str(src / "minibox" / "cli.py")},
                          str(src / "minibox" / "__pycache__" / f"run-path.{sys.implementation.cache_tag}.bundle"))
    assert os.path.exists(built)
    assert loader() == "BundleFinder"
    (src / "minibox" / "cli.py").write_text("def entry_point():\n    print('edited')\n")
    assert loader() == "edited"  # stale: the source ran
    (src / "minibox" / "_bundle.py").unlink()  # minibox moved or broken: the script still starts
    assert loader() == "edited"
