"""The released MASt3R checkpoints: where they come from, where they are cached, how they are fetched.

The real checkpoints are downloaded on first use from their official locations into a cache directory
(``$MSLAM_NS_CHECKPOINTS``, else ``<mslam_ns cache>/checkpoints``; every function also takes ``cache_dir``).
A download streams into ``<name>.part`` (a later call resumes it with an HTTP ``Range`` request), is verified
(size announced by the server, sha256 where the registry knows it, and the file's structure: a ``.pth`` must
be a zip whose every member passes its CRC check, a ``.pkl`` a complete pickle) and only then renamed to its
final name. A corrupt download is deleted and downloaded once more, then reported as an error. A small
``<name>.verified.json`` next to the file records its size and sha256, so later uses only compare the size.

The files are released by NAVER LABS Europe under CC BY-NC-SA 4.0 (non-commercial); a notice is logged as a
warning (shown even where logging is not configured) before the first download of a process. Status and
progress lines go to this module's logger at INFO (the command line shows them; inside ``ns-train`` they stay
quiet); on a terminal with ``progress`` a rich bar is drawn on stderr instead. ``--checkpoint PATH``
(``resolve_checkpoint(checkpoint=...)``) uses a local file instead and never touches the network.
``$MSLAM_NS_WEIGHTS_URL`` replaces the base URL (mirrors; the tests point it at a local HTTP server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from mslam_ns.errors import UserError

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "https://download.europe.naverlabs.com/ComputerVision/MASt3R/"
ENV_CACHE = "MSLAM_NS_CHECKPOINTS"
ENV_URL = "MSLAM_NS_WEIGHTS_URL"

LICENCE_NOTICE = (
    "NOTICE: the MASt3R checkpoints are released by NAVER LABS Europe under the CC BY-NC-SA 4.0 licence\n"
    "(https://creativecommons.org/licenses/by-nc-sa/4.0/): NON-COMMERCIAL use only, with attribution, and\n"
    "derivatives shared alike. By downloading them you accept those terms (see https://github.com/naver/mast3r)."
)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
"""Socket timeout for connecting and for each read."""
RETRIES = 4
"""How many times a failed or interrupted transfer is resumed before giving up."""
RETRY_DELAY_S = 1.0
"""Wait before the first retry; doubled each time (capped at 30 s)."""


@dataclass(frozen=True)
class WeightFile:
    """One released file."""

    name: str
    """Registry key (`mslam-ns download --name NAME`)."""
    filename: str
    """File name at the official location and in the cache."""
    approx_bytes: int | None
    """Approximate size (information and a free-space check only; the server's Content-Length is checked)."""
    sha256: str | None
    """Hex digest when known (None: structural checks only)."""
    description: str

    @property
    def is_zip(self) -> bool:
        """``.pth`` files are torch.save zip archives."""
        return self.filename.endswith(".pth")


WEIGHTS: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            "mast3r",
            "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth",
            2_754_600_000,
            None,
            "MASt3R ViT-L 512 metric network (the two-view prior)",
        ),
        WeightFile(
            "retrieval",
            "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree.pth",
            8_400_000,
            None,
            "retrieval head (whitening) for loop closure",
        ),
        WeightFile(
            "codebook",
            "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_codebook.pkl",
            268_000_000,
            None,
            "retrieval codebook (ASMK centroids) for loop closure",
        ),
    )
}


class DownloadError(UserError):
    """A download that could not be completed or verified (one line, names the URL or the file)."""


# ------------------------------------------------------------------------------------------ locations
def checkpoint_dir() -> Path:
    """``$MSLAM_NS_CHECKPOINTS`` if set, else ``<mslam_ns cache root>/checkpoints``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    from mslam_ns.cuda._backend import cache_root

    return cache_root() / "checkpoints"


def weights_base_url(base_url: str | None = None) -> str:
    """The explicit ``base_url``, else ``$MSLAM_NS_WEIGHTS_URL``, else the official location."""
    url = base_url or os.environ.get(ENV_URL) or OFFICIAL_BASE_URL
    return url if url.endswith("/") else url + "/"


def weight_file(name: str) -> WeightFile:
    """Registry entry by name (a clear error listing the known names)."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise UserError(f"unknown checkpoint {name!r}; known: {', '.join(WEIGHTS)}") from None


def cached_path(entry: WeightFile, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else checkpoint_dir()).expanduser() / entry.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


# ------------------------------------------------------------------------------------------ verification
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES * 8):
            h.update(chunk)
    return h.hexdigest()


def _structure_problem(path: Path, entry: WeightFile) -> str | None:
    """Why the file is not a complete .pth zip / pickle, or None."""
    try:
        if entry.is_zip or zipfile.is_zipfile(path):  # a .pkl written by torch.save is a zip too
            if not zipfile.is_zipfile(path):
                return "not a zip archive (truncated or not a checkpoint)"
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # reads every member and checks its CRC-32
            return f"zip member {bad!r} fails its CRC check" if bad else None
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-1, os.SEEK_END)
            tail = f.read(1)
        if not (head[:1] == b"\x80" and tail == b"."):
            return "not a complete pickle (bad first/last byte)"
        return None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        return f"unreadable archive ({type(e).__name__}: {e})"


def verify_file(path: Path, entry: WeightFile, expected_bytes: int | None = None) -> str | None:
    """Full check of a downloaded file. Returns None when it is good, else what is wrong.

    Checks, cheapest first: the size the server announced, the registry's sha256 (when known), the structure.
    """
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        return f"size {size} bytes, the server announced {expected_bytes}"
    if entry.sha256 is not None:
        digest = sha256_of(path)
        if digest.lower() != entry.sha256.lower():
            return f"sha256 {digest} differs from the expected {entry.sha256}"
    return _structure_problem(path, entry)


def _write_sidecar(path: Path, url: str | None) -> None:
    info = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path), "url": url}
    tmp = _sidecar(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, _sidecar(path))


def is_cached(entry: WeightFile, cache_dir: Path | None = None) -> bool:
    """A cached file whose verification record matches it (cheap: compares sizes only)."""
    path = cached_path(entry, cache_dir)
    try:
        info = json.loads(_sidecar(path).read_text())
        return path.is_file() and path.stat().st_size == int(info["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------ output
_notice_shown = False


def print_licence_notice() -> None:
    """Log the licence notice once per process (a warning, so that it is shown without logging set up)."""
    global _notice_shown
    if not _notice_shown:
        log.warning(LICENCE_NOTICE)
        _notice_shown = True


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


@contextmanager
def _progress(label: str, total: int | None, start: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(nbytes)``: a rich bar on a terminal, a log line per 10% otherwise, nothing if disabled."""
    if not enabled:
        yield lambda n: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        ) as bar:
            task = bar.add_task(label, total=total, completed=start)
            yield lambda n: bar.update(task, advance=n)
        return
    done = start
    next_mark = [0.0]

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if total:
            frac = done / total
            if frac >= next_mark[0] or done == total:
                log.info("  %s: %4.0f%% (%s / %s)", label, 100 * frac, _human(done), _human(total))
                next_mark[0] = (int(frac * 10) + 1) / 10

    log.info("  %s: starting at %s%s", label, _human(start), f" of {_human(total)}" if total else "")
    yield advance


# ------------------------------------------------------------------------------------------------ transfer
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_FATAL_HTTP = {400, 401, 403, 404, 405, 410, 451}


def _check_free_space(folder: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(
            f"{folder}: not enough free disk space ({_human(free)} free, {_human(needed)} "
            f"needed); set ${ENV_CACHE} to another folder"
        )


def download_file(url: str, dest: Path, *, progress: bool = True, label: str | None = None) -> int | None:
    """Download ``url`` to ``dest`` + ``.part``, resuming an existing ``.part`` with a Range request.

    Returns the total size the server announced (None if it announced none). Does NOT rename the ``.part``
    file (the caller verifies it first). Interrupted or failed transfers are resumed up to ``RETRIES`` times
    with an exponential back-off; HTTP 4xx errors fail at once.
    """
    part = dest.with_name(dest.name + ".part")
    label = label or dest.name
    last_error = "no attempt made"
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(min(RETRY_DELAY_S * 2 ** (attempt - 1), 30.0))
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "mslam-ns", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left after our offset: complete already, or too long
                m = re.match(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range", "") if e.headers else "")
                if m and int(m.group(1)) == offset:
                    return offset  # an earlier run got every byte but stopped before verifying
                part.unlink(missing_ok=True)
                last_error = "HTTP 416 (range not satisfiable)"
                continue
            if e.code in _FATAL_HTTP:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            last_error = f"HTTP {e.code} {e.reason}"
            continue
        except (urllib.error.URLError, OSError, HTTPException) as e:
            last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            continue
        with resp:
            total: int | None
            if offset and resp.status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    part.unlink(missing_ok=True)  # a range we did not ask for: start over
                    last_error = f"unexpected Content-Range {resp.headers.get('Content-Range')!r}"
                    continue
                total = None if m.group(3) == "*" else int(m.group(3))
                mode = "ab"
            else:  # 200: the server sends the whole file (it ignored the Range header or there was none)
                offset = 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                mode = "wb"
            _check_free_space(part.parent, None if total is None else total - offset)
            interrupted = None
            try:
                with open(part, mode) as f, _progress(label, total, offset, progress) as advance:
                    while True:
                        try:  # read1: what has arrived (<= CHUNK_BYTES), so a stall keeps every byte before it
                            chunk = resp.read1(CHUNK_BYTES)
                        except (OSError, HTTPException) as e:  # reset / timeout half-way: resume next round
                            interrupted = f"transfer interrupted ({type(e).__name__}: {e})"
                            break
                        if not chunk:
                            break
                        f.write(chunk)
                        advance(len(chunk))
            except OSError as e:  # our side: disk full, permissions
                raise DownloadError(f"{part}: cannot write ({e.strerror or e})") from None
            if interrupted:
                last_error = interrupted
                continue
        size = part.stat().st_size
        if total is not None and size < total:  # the server closed the connection early
            last_error = f"transfer interrupted at {size} of {total} bytes"
            continue
        if total is not None and size > total:
            part.unlink(missing_ok=True)
            last_error = f"received {size} bytes, more than the {total} announced"
            continue
        return total
    raise DownloadError(
        f"{url}: download failed after {RETRIES + 1} attempts ({last_error}); run the command again to resume"
    )


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file next to ``path`` (POSIX; a no-op elsewhere) so two processes don't interleave."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(
    entry: WeightFile, cache_dir: Path | None = None, base_url: str | None = None, *, progress: bool = True
) -> Path:
    """The cached, verified file for ``entry``: used as is when cached, else downloaded and verified.

    A cached file without a verification record is verified once (and replaced when bad). A download that
    fails verification is deleted and downloaded once more; a second failure raises ``DownloadError``.
    """
    path = cached_path(entry, cache_dir)
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent}: checkpoint folder is not a folder")
    if is_cached(entry, cache_dir):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot create the checkpoint folder ({e.strerror or e})") from None
    url = weights_base_url(base_url) + entry.filename
    with _lock(path):
        if is_cached(entry, cache_dir):  # another process finished it while we waited
            return path
        if path.is_file():  # e.g. copied in by hand: verify once
            problem = verify_file(path, entry)
            if problem is None:
                _write_sidecar(path, None)
                return path
            log.warning("%s: %s; deleting it and downloading again", path, problem)
            path.unlink()
        print_licence_notice()
        log.info("downloading %s - %s\n  from %s\n  to   %s", entry.name, entry.description, url, path)
        part = path.with_name(path.name + ".part")
        for round_ in (1, 2):
            total = download_file(url, path, progress=progress, label=entry.name)
            problem = verify_file(part, entry, expected_bytes=total)
            if problem is None:
                os.replace(part, path)
                _write_sidecar(path, url)
                return path
            part.unlink(missing_ok=True)
            if round_ == 1:
                log.warning("%s: downloaded file is corrupt (%s); downloading it again", url, problem)
        raise DownloadError(
            f"{url}: downloaded file is corrupt twice ({problem}); deleted it. Check the "
            f"mirror (${ENV_URL}) or download it by hand and pass --checkpoint PATH"
        )


# ------------------------------------------------------------------------------------------------ public
def resolve_checkpoint(
    name: str = "mast3r", checkpoint: Path | None = None, cache_dir: Path | None = None, download: bool = True
) -> Path:
    """The checkpoint file to load.

    ``checkpoint`` (a user's ``--checkpoint PATH``) is checked to exist and be readable and is returned as
    is. Otherwise the registry file ``name`` from the cache, downloaded first when missing (``download``
    False: a clear error instead).
    """
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.exists():
            raise UserError(f"{p}: checkpoint file not found")
        if not p.is_file():
            raise UserError(f"{p}: checkpoint is not a regular file")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"{p}: checkpoint is not readable ({e.strerror or e})") from None
        return p
    entry = weight_file(name)
    path = cached_path(entry, cache_dir)
    if is_cached(entry, cache_dir):
        return path
    if not download:
        raise UserError(
            f"{path}: checkpoint {name!r} is not downloaded; run `mslam-ns download --name {name}` "
            f"or pass --checkpoint PATH"
        )
    return fetch(entry, cache_dir)
