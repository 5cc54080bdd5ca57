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


def _encoder() -> Any:
    """The C encoder as ``json.dumps`` configures it with its defaults (fresh markers each time)."""
    return _json.make_encoder(
        {},                                # markers: check_circular=True
        _not_serializable,                 # default
        _json.encode_basestring_ascii,     # ensure_ascii=True
        None,                              # indent
        ": ", ", ",                        # key and item separators
        False, False, True,                # sort_keys, skipkeys, allow_nan
    )


def _indented(value: Any, step: str, level: int, open_ids: set[int]) -> str | None:
    """``json.dumps(value, indent=len(step))``'s text for str-keyed dicts and lists; None: leave it to json."""
    if not isinstance(value, (dict, list, tuple)):
        return "".join(_encoder()(value, 0))
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    if id(value) in open_ids:
        return None  # a cycle: json raises its ValueError
    open_ids.add(id(value))
    parts: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            inner = _indented(item, step, level + 1, open_ids) if isinstance(key, str) else None
            if inner is None:
                return None  # a key json converts (int, float, bool, None), or a cycle below
            parts.append(f"{_json.encode_basestring_ascii(key)}: {inner}")
    else:
        for item in value:
            inner = _indented(item, step, level + 1, open_ids)
            if inner is None:
                return None
            parts.append(inner)
    open_ids.discard(id(value))
    pad = "\n" + step * (level + 1)
    brackets = "{}" if isinstance(value, dict) else "[]"
    return f"{brackets[0]}{pad}{(',' + pad).join(parts)}\n{step * level}{brackets[1]}"


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``json.dumps(value)`` or ``json.dumps(value, indent=N)``: the same text, or the same error."""
    if indent is None:
        return "".join(_encoder()(value, 0))
    if isinstance(indent, int) and not isinstance(indent, bool):
        text = _indented(value, " " * indent, 0, set())
        if text is not None:
            return text
    import json

    return json.dumps(value, indent=indent)
