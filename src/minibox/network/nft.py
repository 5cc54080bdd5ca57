"""minibox's own nftables tables: running nft commands, and rules that belong to one sandbox.

Kernel feature: netfilter, driven by nft(8)'s language (its JSON output,
``nft -j``, for reading back) through libnftables(3), the library behind
the ``nft`` binary, called in-process with ctypes: a command costs well
under a millisecond instead of a fork and exec of ``nft`` (about 18 ms
each here), and a bridged start needs a few.  Where the library is
missing, the ``nft`` binary does the same.  minibox keeps everything it adds in tables of its own
name (``MINIBOX_NFT_TABLE``, default ``minibox``), one per family it needs:

* ``ip <table>`` -- published ports (DNAT on the ``output`` hook,
  :mod:`minibox.network.ports`) and what bridged sandboxes may reach on
  the host and beyond (``input`` and ``forward`` hooks,
  :mod:`minibox.network.guard`);
* ``bridge <table>`` -- what each bridge port may send (layer 2,
  :mod:`minibox.network.guard`).

The host's own tables are never read for decisions, changed or flushed.
Every rule carries its owner's sandbox id as the first word of its
comment; :func:`remove_owner` deletes an owner's rules by handle, and a
table with its last rule.  Callers hold :func:`minibox.network.locked`
around any read-then-change, so two sandboxes never race a table's removal
against their own addition.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import threading
from typing import Any

from ..errors import PreflightError, SetupError

#: The families minibox keeps a table in.
FAMILIES = ("ip", "bridge")

# <nftables/libnftables.h>: output flags
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4

# libnftables keeps some global state: one command at a time in this process.
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_missing = False


def _libnftables() -> ctypes.CDLL | None:
    global _lib, _lib_missing
    if _lib is None and not _lib_missing:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            _lib_missing = True
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


def _run_library(lib: ctypes.CDLL, commands: str, flags: int) -> tuple[int, str, str]:
    with _lock:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise SetupError("nft", 12, detail="nft_ctx_new")
        try:
            lib.nft_ctx_output_set_flags(ctx, flags)
            lib.nft_ctx_buffer_output(ctx)  # into buffers, not this process's stdout/stderr
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
        finally:
            lib.nft_ctx_free(ctx)
    return rc, out.decode(), err.decode()


def _run_binary(commands: str, flags: int) -> tuple[int, str, str]:
    path = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise PreflightError("bridge networking needs nftables (libnftables or nft(8)); "
                             "install the 'nftables' package")
    if flags & _OUTPUT_JSON:
        # -j also makes -f read JSON: a (single, listing) command goes on the command line instead.
        args, script = [path, "-j", "-a", *commands.split()], None
    else:
        args, script = [path, "-f", "-"], commands
    try:
        done = subprocess.run(args, input=script, capture_output=True, text=True, check=False, timeout=30)
    except OSError as e:
        raise SetupError("nft", e.errno, detail=path) from e
    return done.returncode, done.stdout, done.stderr


def run(commands: str, *, json_output: bool = False) -> str:
    """Run nft ``commands`` (its language, one per line) as one transaction; return the output.

    ``json_output`` asks for JSON with rule handles (``nft -j -a``).
    SetupError with nft's message when the kernel or the parser refuses.
    """
    flags = _OUTPUT_JSON | _OUTPUT_HANDLE if json_output else 0
    lib = _libnftables()
    rc, out, err = _run_library(lib, commands, flags) if lib is not None else _run_binary(commands, flags)
    if rc != 0:
        first = commands.strip().splitlines()[0] if commands.strip() else ""
        raise SetupError("nft", None, detail=f"{first}: {err.strip()}")
    return out


def apply(lines: list[str]) -> None:
    """Apply nft commands as one transaction: all of them or none."""
    run("\n".join(lines) + "\n")


def rules_or_none(table: str, family: str = "ip") -> list[dict[str, Any]] | None:
    """Every rule of ``family table`` as nft's JSON objects (``chain``, ``handle``, ``comment``...);
    None when the table does not exist.  One command, no separate existence check."""
    try:
        out = run(f"list table {family} {table}", json_output=True)
    except SetupError as e:
        if "No such file or directory" in str(e):
            return None
        raise
    data: dict[str, Any] = json.loads(out)
    return [item["rule"] for item in data.get("nftables", []) if "rule" in item]


def rules(table: str, family: str = "ip") -> list[dict[str, Any]]:
    """:func:`rules_or_none`, empty when the table does not exist."""
    return rules_or_none(table, family) or []


def table_exists(table: str, family: str = "ip") -> bool:
    return rules_or_none(table, family) is not None


def owner_of(rule: dict[str, Any]) -> str | None:
    """The sandbox id a rule belongs to: the first word of its comment."""
    comment = rule.get("comment")
    return str(comment).split(" ", 1)[0] if comment else None


def remove_owner(table: str, owner: str) -> None:
    """Delete ``owner``'s rules from minibox's tables of every family; a table goes with its last rule.

    Idempotent; one transaction for both families.  The caller holds
    :func:`minibox.network.locked`.
    """
    lines: list[str] = []
    for family in FAMILIES:
        try:
            found = rules_or_none(table, family)
        except PreflightError:
            return  # no nftables at all: nothing can have been added
        if found is None:
            continue
        mine = [r for r in found if owner_of(r) == owner]
        if len(mine) == len(found):
            lines.append(f"delete table {family} {table}")
        else:
            lines += [f"delete rule {family} {table} {r['chain']} handle {int(r['handle'])}" for r in mine]
    if lines:
        apply(lines)
