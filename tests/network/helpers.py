"""What both network test modules need: a free test subnet, and views of the host's links and tables."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from minibox.network import bridge as br


def free_test_subnet(pool: str) -> ipaddress.IPv4Network:
    """A /24 of ``pool`` that no host route overlaps (reading routes only)."""
    with br.opened() as ipr:
        routes = br.host_routes(ipr)
    subnet, _ = br.choose_subnet(None, routes, pool=ipaddress.IPv4Network(pool))
    return subnet


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {f"{t['table']['family']} {t['table']['name']}" for t in json.loads(out)["nftables"] if "table" in t}


def read_from(host: str, port: int, timeout: float) -> bytes:
    """Connect, send a line, read until the server closes; retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                conn.sendall(b"ping\n")
                conn.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on {host}:{port}")
        time.sleep(0.1)


@contextmanager
def on_test_network(pool: str, bridge: str, table: str) -> Iterator[ipaddress.IPv4Network]:
    """Point minibox at a free subnet of ``pool``, a test bridge and nft table; restore the environment after."""
    subnet = free_test_subnet(pool)
    saved = {k: os.environ.get(k) for k in ("MINIBOX_BRIDGE", "MINIBOX_SUBNET", "MINIBOX_NFT_TABLE")}
    os.environ.update(MINIBOX_BRIDGE=bridge, MINIBOX_SUBNET=str(subnet), MINIBOX_NFT_TABLE=table)
    try:
        yield subnet
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
