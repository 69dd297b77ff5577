"""Sockets that listen on one chosen address only (never on every interface)."""

from __future__ import annotations

import ipaddress
import socket


def bound_listen_socket(addr: str, port: int = 0) -> socket.socket:
    """A listening TCP socket bound to ``addr`` only (port 0 = any free port)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(1024)
    return sock


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); False for anything else."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
