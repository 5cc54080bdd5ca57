"""JSON through CPython's own C accelerator, without the :mod:`json` package's Python layer.

``import json`` costs a command-line start about 3 ms here: json.decoder
compiles regular expressions (importing re, and re imports enum), and
json.encoder, json.scanner and json.decoder are three more modules.  The
parsing and the printing are done by the C module ``_json`` either way.
:func:`loads` and :func:`dumps` call it directly, configured exactly as
``json.loads(text)`` and ``json.dumps(obj)`` with their defaults configure
it, and hand anything they do not cover (bytes, options, a document that
does not parse, an object JSON cannot hold) to :mod:`json` itself -- so
results and error messages are json's own, to the character.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # JSON's whitespace (RFC 8259 section 2); json.decoder's WHITESPACE pattern
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _DecoderSettings:
    """The attributes ``_json.make_scanner`` reads: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


# typeshed names the argument's type make_scanner; the C code reads these attributes of any object,
# as json.JSONDecoder passes itself.
_scan_once = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``; what this does not cover goes to json itself (see the module's doc)."""
    if isinstance(text, bytes) and not text.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) \
            and b"\x00" not in text[:4]:
        text = text.decode("utf-8", "surrogatepass")  # json.detect_encoding's answer for such bytes
    if isinstance(text, str) and not text.startswith("\ufeff"):
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan_once(text, start)
        except (StopIteration, ValueError):
            pass  # json.loads below raises the same JSONDecodeError, with its message
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(text)


def _not_serializable(value: Any) -> Any:
    import json

    return json.JSONEncoder().default(value)  # raises json's TypeError, with its message


def dumps(value: Any) -> str:
    """``json.dumps(value)``: the same text, or the same error."""
    if isinstance(value, (dict, list)):
        encode = _json.make_encoder(
            {},                                # markers, fresh per call: check_circular=True
            _not_serializable,                 # default
            _json.encode_basestring_ascii,     # ensure_ascii=True
            None,                              # indent
            ": ", ", ",                        # key and item separators
            False, False, True,                # sort_keys, skipkeys, allow_nan
        )
        return "".join(encode(value, 0))
    import json

    return json.dumps(value)
