"""Starting the viser server: host checks, the URL to print, one handle for both viewer modes."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from mslam_ns.errors import UserError

__all__ = ["ViewerHandle", "open_server", "free_port", "viewer_url"]

log = logging.getLogger(__name__)


@dataclass
class ViewerHandle:
    """A running viewer: `url` to open, `stop()` to end it."""

    url: str
    server: Any
    """The `viser.ViserServer`."""
    scene: Any
    """The `SlamScene` on it."""

    def client_count(self) -> int:
        """Browsers connected right now."""
        return len(self.server.get_clients())

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as e:  # already stopped / event loop gone
                log.debug("viser stop: %s", e)
            self.server = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at the moment (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_host(host: str) -> None:
    """UserError unless `host` is an address this machine can listen on (viser would hang otherwise)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve ({e.strerror})") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr[0], 0))
        except OSError as e:
            raise UserError(f"--host {host}: cannot listen on this address ({e.strerror})") from None


def viewer_url(host: str, port: int) -> str:
    """The URL to open for a server on host:port: a wildcard address becomes this machine's loopback (the
    IPv6 one for '::'), and IPv6 literals are bracketed (`http://[::1]:8080`, RFC 3986)."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{int(port)}"


def open_server(host: str = "127.0.0.1", port: int = 8080) -> tuple[Any, str]:
    """A `viser.ViserServer` on host:port (the next free port when taken) and its URL."""
    if not 0 < int(port) < 65536:
        raise UserError(f"--port {port}: must be between 1 and 65535")
    _check_host(host)
    try:
        import viser
    except ImportError as e:
        raise UserError(f"the viewer needs viser (pip install 'mslam_ns[viewer]'): {e}") from None
    server = viser.ViserServer(host=host, port=int(port), verbose=False)
    actual = server.get_port()
    if actual != int(port):
        log.info("port %d is taken; serving on %d", port, actual)
    return server, viewer_url(host, actual)
