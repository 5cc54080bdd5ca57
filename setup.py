"""Build minibox: the pure-Python package plus the cffi C core (API mode).

``cffi_modules`` compiles csrc/spawn.c into ``minibox._minibox_native``
when the package is installed (``pip install .`` or ``pip install -e .``).
The static helpers (the VM guest agent, minibox-init) are compiled on first
use; their sources travel with the package as ``minibox/_csrc/``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STATIC_SOURCES = ("agent/agent.c", "init/init.c", "keeper/keeper.c", "fsguard/fsguard.c", "oci/gate.c",
                  "oci/front.c")


class BuildPyWithSources(build_py):
    """Copy the static helpers' C sources into the built package."""

    def run(self) -> None:
        super().run()
        for relative in STATIC_SOURCES:
            target = Path(self.build_lib) / "minibox" / "_csrc" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path("csrc") / relative, target)


setup(cffi_modules=["csrc/build_native.py:ffibuilder"], cmdclass={"build_py": BuildPyWithSources})
