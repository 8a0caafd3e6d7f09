"""Checkpoint download/cache, end to end against a real HTTP server on 127.0.0.1 (never the internet).

The server serves the tiny official-layout checkpoint (tests/data/mast3r/tiny_A) under the official file
names, with Range support, and can misbehave on purpose: drop the connection half-way once, send corrupted
bytes, ignore Range, or answer 404. A stalled transfer is a connection the test fills before the client
reads from it (`test_stalled_transfer_times_out_and_resumes`), so no server thread races the client's timer.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main as cli_main
from mslam_ns.errors import UserError
from mslam_ns.model import weights as W
from tests.model._fixtures import mast3r_fixture_root

pytestmark = pytest.mark.timeout(120)

MAST3R = W.WEIGHTS["mast3r"]


def _checkpoint_bytes() -> bytes:
    """The tiny official-layout checkpoint of the conformance fixtures (a missing copy fails the test)."""
    return (mast3r_fixture_root() / "tiny_A" / "checkpoint.pth").read_bytes()


CKPT = _checkpoint_bytes()
CODEBOOK = pickle.dumps(np.arange(4096, dtype=np.float32).reshape(64, 64), protocol=4)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((name, rng))
            n_get = sum(1 for r in srv.requests if r[0] == name)
        data = srv.files.get(name)
        mode = srv.mode
        if data is None or mode == "404":
            self.send_error(404, "Not Found")
            return
        if mode == "corrupt" or (mode == "corrupt_once" and n_get == 1):
            data = bytearray(data)
            for k in range(len(data) // 2, len(data) // 2 + 64):  # same length, damaged middle
                data[k] ^= 0xFF
            data = bytes(data)
        start = 0
        if rng and mode != "no_range":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "drop_once" and n_get == 1:
            self.wfile.write(body[: len(body) // 2])  # then hang up
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str | None]] = []
        self.mode = "normal"
        self.files = {
            W.WEIGHTS["mast3r"].filename: CKPT,
            W.WEIGHTS["retrieval"].filename: CKPT,
            W.WEIGHTS["codebook"].filename: CODEBOOK,
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/ComputerVision/MASt3R/"

    def gets(self, name: str = MAST3R.filename) -> list[str | None]:
        with self.lock:
            return [r for n, r in self.requests if n == name]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    monkeypatch.setenv(W.ENV_URL, srv.url)
    monkeypatch.delenv(W.ENV_CACHE, raising=False)
    monkeypatch.setattr(W, "RETRY_DELAY_S", 0.01)
    monkeypatch.setattr(W, "TIMEOUT_S", 10.0)
    monkeypatch.setattr(W, "_notice_shown", False)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _assert_good_cache(path: Path) -> None:
    assert path.read_bytes() == CKPT
    assert not path.with_name(path.name + ".part").exists()
    assert W.is_cached(MAST3R, path.parent)


# ----------------------------------------------------------------------------------------- happy path
def test_download_logs_licence_and_caches(server: _Server, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=W.__name__)
    p = W.resolve_checkpoint("mast3r", cache_dir=tmp_path / "c")
    assert p == tmp_path / "c" / MAST3R.filename
    _assert_good_cache(p)
    notice = [r for r in caplog.records if "CC BY-NC-SA 4.0" in r.getMessage()]
    assert len(notice) == 1 and notice[0].levelno == logging.WARNING  # shown even without logging set up
    assert "NON-COMMERCIAL" in notice[0].getMessage()
    assert any("100%" in r.getMessage() for r in caplog.records)  # progress lines when not on a terminal
    assert server.gets() == [None]
    # second call: from the cache, the server is not contacted
    assert W.resolve_checkpoint("mast3r", cache_dir=tmp_path / "c") == p
    assert server.gets() == [None]


def test_env_var_cache_dir_and_explicit_dir_wins(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "env"))
    assert W.checkpoint_dir() == tmp_path / "env"
    p = W.resolve_checkpoint()
    assert p == tmp_path / "env" / MAST3R.filename
    _assert_good_cache(p)
    q = W.resolve_checkpoint(cache_dir=tmp_path / "explicit")
    assert q == tmp_path / "explicit" / MAST3R.filename and q.read_bytes() == CKPT
    assert len(server.gets()) == 2


def test_default_cache_dir_under_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(W.ENV_CACHE, raising=False)
    monkeypatch.setenv("MSLAM_NS_CACHE", str(tmp_path / "root"))
    assert W.checkpoint_dir() == tmp_path / "root" / "checkpoints"


# -------------------------------------------------------------------------------------- resume / range
def test_interrupted_download_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.mode = "drop_once"
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    gets = server.gets()
    assert len(gets) == 2 and gets[0] is None
    offset = int(re.fullmatch(r"bytes=(\d+)-", gets[1]).group(1))
    assert 0 < offset < len(CKPT)


STALL_AT = 8192
"""Body bytes the stalled connection delivers before it goes silent (with the headers, well inside one
loopback segment and the socket buffers, so all of it is in the client's receive buffer before its first read)."""


def test_stalled_transfer_times_out_and_resumes(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first connection the client opens goes to a socket the test has already filled with the response
    headers and the first STALL_AT bytes, and which then stays open and silent: the client must keep every
    byte, give up on its read time-out (W.TIMEOUT_S, set tiny here: nothing is in flight that it could cut
    short) and resume from the real server with a Range request. No thread, no sleep: the stalled peer's
    bytes are in place before the client's timer starts, and later connections get a 60 s time-out (a
    ceiling that only a hung server would reach), so nothing races a clock."""
    real_connect = socket.create_connection
    stalled: dict[str, socket.socket] = {}
    asked: list[tuple[str, int]] = []

    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        asked.append(tuple(address))
        if stalled:  # every later connection: the real server, with a long time-out
            return real_connect(address, 60.0, source_address)
        listener = socket.create_server(("127.0.0.1", 0))
        client = real_connect(listener.getsockname(), timeout)  # the client's time-out (W.TIMEOUT_S)
        peer, _ = listener.accept()
        listener.close()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(CKPT)}\r\nAccept-Ranges: bytes\r\n\r\n"
        peer.sendall(head.encode() + CKPT[:STALL_AT])  # ... and then nothing more, connection kept open
        stalled["peer"] = peer
        monkeypatch.setattr(W, "TIMEOUT_S", 60.0)  # read by the next attempt's urlopen
        return client

    monkeypatch.setattr(socket, "create_connection", connect)  # http.client connects through it
    monkeypatch.setattr(W, "TIMEOUT_S", 0.05)
    try:
        p = W.resolve_checkpoint(cache_dir=tmp_path)
        peer = stalled["peer"]
        peer.settimeout(5.0)
        request = peer.recv(65536).decode("latin-1")  # what the client sent on the stalled connection
    finally:
        if stalled:
            stalled["peer"].close()
    _assert_good_cache(p)
    host, port = server.server_address[:2]
    assert asked == [(host, port), (host, port)]  # the stalled attempt and one resume, both to the server
    assert request.startswith(f"GET /ComputerVision/MASt3R/{MAST3R.filename} ") and "range:" not in request.lower()
    assert server.gets() == [f"bytes={STALL_AT}-"]  # resumed exactly where the stall began: nothing lost


def test_existing_part_file_is_resumed(server: _Server, tmp_path: Path) -> None:
    part = tmp_path / (MAST3R.filename + ".part")
    part.write_bytes(CKPT[:12345])
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    assert server.gets() == ["bytes=12345-"]


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    server.mode = "no_range"
    part = tmp_path / (MAST3R.filename + ".part")
    part.write_bytes(b"\0" * 5000)  # must be discarded, not appended to
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    assert server.gets() == ["bytes=5000-"]


def test_complete_part_file_is_verified_without_refetching(server: _Server, tmp_path: Path) -> None:
    (tmp_path / (MAST3R.filename + ".part")).write_bytes(CKPT)  # crashed after the transfer, before rename
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    assert server.gets() == [f"bytes={len(CKPT)}-"]  # answered 416 with the total: nothing re-sent


# ---------------------------------------------------------------------------------------- corruption
def test_corrupt_download_is_refetched_once(server: _Server, tmp_path: Path, caplog) -> None:
    server.mode = "corrupt_once"
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    assert len(server.gets()) == 2
    assert any("downloaded file is corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_corrupt_twice_is_a_clear_error_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.mode = "corrupt"
    with pytest.raises(
        W.DownloadError,
        match=r"http://127\.0\.0\.1:\d+/.*metric\.pth: downloaded file is "
        r"corrupt twice .*CRC",
    ):
        W.resolve_checkpoint(cache_dir=tmp_path)
    assert len(server.gets()) == 2
    assert not (tmp_path / MAST3R.filename).exists()
    assert not (tmp_path / (MAST3R.filename + ".part")).exists()


def test_truncated_download_fails_structure_check(server: _Server, tmp_path: Path) -> None:
    server.files[MAST3R.filename] = CKPT[: len(CKPT) // 3]  # announced length matches, zip is incomplete
    with pytest.raises(W.DownloadError, match="not a zip archive"):
        W.resolve_checkpoint(cache_dir=tmp_path)


def test_corrupt_cached_file_is_replaced(server: _Server, tmp_path: Path) -> None:
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    with open(p, "r+b") as f:  # truncate the cached file behind our back
        f.truncate(len(CKPT) // 2)
    assert not W.is_cached(MAST3R, tmp_path)
    assert W.resolve_checkpoint(cache_dir=tmp_path) == p
    _assert_good_cache(p)
    assert len(server.gets()) == 2


def test_hand_copied_file_is_verified_once_and_kept(server: _Server, tmp_path: Path) -> None:
    (tmp_path / MAST3R.filename).write_bytes(CKPT)  # no verification record yet
    p = W.resolve_checkpoint(cache_dir=tmp_path)
    _assert_good_cache(p)
    assert server.gets() == []


def test_sha256_is_enforced(server: _Server, tmp_path: Path) -> None:
    good = W.WeightFile("t", MAST3R.filename, None, hashlib.sha256(CKPT).hexdigest(), "test")
    assert W.fetch(good, tmp_path / "a").read_bytes() == CKPT
    bad = W.WeightFile("t", MAST3R.filename, None, "0" * 64, "test")
    with pytest.raises(W.DownloadError, match="sha256"):
        W.fetch(bad, tmp_path / "b")


def test_pickle_codebook_structure(server: _Server, tmp_path: Path) -> None:
    cb = W.WEIGHTS["codebook"]
    assert W.fetch(cb, tmp_path).read_bytes() == CODEBOOK
    server.files[cb.filename] = CODEBOOK[:-10]
    with pytest.raises(W.DownloadError, match="pickle"):
        W.fetch(cb, tmp_path / "other")


# -------------------------------------------------------------------------------------- errors, local
def test_404_is_a_clear_error(server: _Server, tmp_path: Path) -> None:
    server.mode = "404"
    with pytest.raises(W.DownloadError, match=r"metric\.pth: HTTP 404"):
        W.resolve_checkpoint(cache_dir=tmp_path)
    assert len(server.gets()) == 1  # not retried


def test_unreachable_server_is_bounded_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = _Server()  # bound but never serving, then closed: connection refused
    url = srv.url
    srv.server_close()
    monkeypatch.setattr(W, "RETRY_DELAY_S", 0.01)
    with pytest.raises(W.DownloadError, match="download failed after"):
        W.fetch(MAST3R, tmp_path, base_url=url)


def test_local_checkpoint_is_used_as_is(server: _Server, tmp_path: Path) -> None:
    local = tmp_path / "mine.pth"
    local.write_bytes(b"anything")
    assert W.resolve_checkpoint(checkpoint=local) == local
    with pytest.raises(UserError, match=r"missing\.pth: checkpoint file not found"):
        W.resolve_checkpoint(checkpoint=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="not a regular file"):
        W.resolve_checkpoint(checkpoint=tmp_path)
    assert server.gets() == []


def test_no_download_mode_and_unknown_name(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not downloaded"):
        W.resolve_checkpoint(cache_dir=tmp_path, download=False)
    with pytest.raises(UserError, match="unknown checkpoint 'nope'"):
        W.resolve_checkpoint("nope", cache_dir=tmp_path)
    assert server.gets() == []


# ----------------------------------------------------------------------------------------------- CLI
def test_download_command_all(server: _Server, tmp_path: Path, capsys) -> None:
    rc = cli_main(["download", "--cache-dir", str(tmp_path), "--base-url", server.url])
    assert rc == 0
    out = capsys.readouterr().out
    for entry in W.WEIGHTS.values():
        assert str(tmp_path / entry.filename) in out
        assert W.is_cached(entry, tmp_path)
    assert (tmp_path / W.WEIGHTS["codebook"].filename).read_bytes() == CODEBOOK
    rc = cli_main(["download", "--cache-dir", str(tmp_path), "--name", "mast3r"])
    assert rc == 0 and "already cached" in capsys.readouterr().out
    assert len(server.gets()) == 1


def test_download_command_404_exit_code(server: _Server, tmp_path: Path, capsys) -> None:
    server.mode = "404"
    assert cli_main(["download", "--name", "mast3r", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mslam-ns: error:" in err and "HTTP 404" in err
