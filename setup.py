"""Build minibox: the pure-Python package plus the cffi C core (API mode).

``cffi_modules`` compiles csrc/spawn.c into ``minibox._minibox_native``
when the package is installed (``pip install .`` or ``pip install -e .``).
"""

from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
