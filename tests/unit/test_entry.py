"""The console scripts ``make setup`` writes (minibox/_entry.py): python -S, the paths site would add.

They must start without site (no .pth files, no sitecustomize), still honour
PYTHONPATH, find minibox where pip's scripts would, and fall back to site
when the recorded paths no longer hold it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minibox import _entry

PROBE = '''
def entry_point():
    import sys
    print(sys.flags.no_site, "site" in sys.modules)
    print("\\n".join(sys.path))
'''


def _script(tmp_path: Path, module: str, paths: list[str]) -> Path:
    script = tmp_path / "bin" / "probe-script"
    script.parent.mkdir(exist_ok=True)
    script.write_text(_entry.script_text(sys.executable, module, paths))
    script.chmod(0o755)
    return script


def test_the_script_starts_without_site_and_with_the_recorded_paths(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "probe.py").write_text(PROBE)
    script = _script(tmp_path, "probe", [str(tmp_path / "lib")])
    env = {**os.environ, "PYTHONPATH": "/somewhere/else"}
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert out[0] == "1 False"  # python -S: site never ran
    path = out[1:]
    assert str(script.parent) not in path  # the bin directory is not importable
    assert path[0] == "/somewhere/else"  # PYTHONPATH first, as with pip's script
    assert path[-1] == str(tmp_path / "lib")  # site's directories last, as site puts them


def test_a_script_whose_paths_moved_starts_site_after_all(tmp_path: Path) -> None:
    script = _script(tmp_path, "minibox.cli", [str(tmp_path / "gone")])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "minibox 0.1.0"


def test_install_rewrites_the_scripts_pip_wrote(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "minibox").write_text("#!/bin/sh\necho pip's script\n")
    assert _entry.install(str(bindir), python=sys.executable) == ["minibox"]  # only what pip installed there
    text = (bindir / "minibox").read_text()
    assert text.startswith(f"#!{sys.executable} -S\n") and "from minibox.cli import entry_point" in text
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(bindir / "minibox"), "--version"], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "minibox 0.1.0", done.stderr


def test_an_interpreter_path_that_cannot_be_a_shebang_keeps_pips_scripts(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "minibox").write_text("pip's")
    assert _entry.install(str(bindir), python="/a path/with a space/python") == []
    assert _entry.install(str(bindir), python="/" + "x" * 200) == []
    assert (bindir / "minibox").read_text() == "pip's"


def test_install_puts_the_c_front_end_before_minibox_oci(tmp_path: Path) -> None:
    """bin/minibox-oci becomes csrc/oci/front.c; the Python script moves to libexec/minibox/ under its name."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("minibox-oci", "minibox-oci-vm"):
        (bindir / name).write_text("#!/bin/sh\necho pip's script\n")
    assert _entry.install(str(bindir), python=sys.executable) == ["minibox-oci", "minibox-oci-vm"]
    libexec = tmp_path / "libexec" / "minibox"
    assert (bindir / "minibox-oci").read_bytes()[:4] == b"\x7fELF"
    assert "from minibox.oci.cli import entry_point" in (libexec / "minibox-oci").read_text()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(bindir / "minibox-oci"), "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.startswith("minibox-oci version"), done.stderr
    # each name hands over to the script of its own name (the name picks the isolation), argv unchanged
    (libexec / "minibox-oci-vm").write_text('#!/bin/sh\necho "vm script:" "$@"\n')
    done = subprocess.run([str(bindir / "minibox-oci-vm"), "--root", "/x", "list", "--quiet"],
                          capture_output=True, text=True)
    assert done.stdout == "vm script: --root /x list --quiet\n", done.stderr
