"""Downloads that fail fast offline: one short TCP probe of the host before any hub's minute-long retry loop."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def host_reachable(url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the URL's host opens within `timeout` s, else the reason it did not."""
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
        return None
    except OSError as err:
        return f"{urlparse(url).hostname} unreachable: {err}"


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
