"""minibox's own nftables tables: running nft(8), and rules that belong to one sandbox.

Kernel feature: netfilter, driven by nft(8) (its JSON output, ``nft -j``,
for reading back).  minibox keeps everything it adds in tables of its own
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

import json
import os
import shutil
import subprocess
from typing import Any

from ..errors import PreflightError, SetupError

#: The families minibox keeps a table in.
FAMILIES = ("ip", "bridge")


def _nft_binary() -> str:
    path = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise PreflightError("bridge networking needs nftables' nft(8); install the 'nftables' package")
    return path


def run(*args: str, script: str | None = None) -> str:
    """Run ``nft ARGS`` (with ``script`` on stdin for ``-f -``: one atomic transaction); its stdout."""
    try:
        done = subprocess.run([_nft_binary(), *args], input=script, capture_output=True, text=True,
                              check=False, timeout=30)
    except OSError as e:
        raise SetupError("nft", e.errno, detail=" ".join(args)) from e
    if done.returncode != 0:
        raise SetupError("nft", None, detail=f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def apply(lines: list[str]) -> None:
    """Apply nft commands as one transaction: all of them or none."""
    run("-f", "-", script="\n".join(lines) + "\n")


def table_exists(table: str, family: str = "ip") -> bool:
    out = run("-j", "list", "tables", family)
    return any(item.get("table", {}).get("name") == table for item in json.loads(out).get("nftables", []))


def table_exists_safe(table: str, family: str = "ip") -> bool:
    """:func:`table_exists`, False when nft is not installed (then nothing can have been added)."""
    try:
        return table_exists(table, family)
    except PreflightError:
        return False


def rules(table: str, family: str = "ip") -> list[dict[str, Any]]:
    """Every rule of ``family table`` as nft's JSON objects (``chain``, ``handle``, ``comment``...)."""
    if not table_exists(table, family):
        return []
    data: dict[str, Any] = json.loads(run("-j", "-a", "list", "table", family, table))
    return [item["rule"] for item in data.get("nftables", []) if "rule" in item]


def owner_of(rule: dict[str, Any]) -> str | None:
    """The sandbox id a rule belongs to: the first word of its comment."""
    comment = rule.get("comment")
    return str(comment).split(" ", 1)[0] if comment else None


def remove_owner(table: str, owner: str) -> None:
    """Delete ``owner``'s rules from minibox's tables of every family; a table goes with its last rule.

    Idempotent.  The caller holds :func:`minibox.network.locked`.
    """
    for family in FAMILIES:
        if not table_exists_safe(table, family):
            continue
        found = rules(table, family)
        mine = [r for r in found if owner_of(r) == owner]
        if len(mine) == len(found):
            apply([f"delete table {family} {table}"])
        elif mine:
            apply([f"delete rule {family} {table} {r['chain']} handle {int(r['handle'])}" for r in mine])
