"""The only importer of the compiled C core (``minibox._minibox_native``).

The extension is built from csrc/ by cffi in out-of-line API mode when the
package is installed.  Everything else in minibox imports ``ffi`` and
``lib`` from here, so a missing build is reported once, clearly.
"""

from __future__ import annotations

from .errors import PreflightError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

try:
    from ._minibox_native import ffi as _ffi
    from ._minibox_native import lib as _lib
except ImportError as e:  # pragma: no cover - depends on the installation
    raise PreflightError(
        "minibox's C core is not built; install the package with 'pip install -e .' "
        "(needs gcc, libseccomp-dev and the Python headers)"
    ) from e

ffi: Any = _ffi
lib: Any = _lib
