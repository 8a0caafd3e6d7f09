"""Atomic file and folder output: a reader never sees a half-written result.

`atomic_write` writes into a temporary file in the destination folder and `os.replace`s it onto the target
only when the `with` block finishes without an exception. `atomic_output_dir` does the same for a whole
folder: files are built in a temporary sibling folder and moved in at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_output_dir", "check_writable"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import (os.umask can only be read by setting it)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path` for writing; on success replace `path` with it.

    Args:
        path: the final file; its parent folder is created if missing.
        mode: "w" (text) or "wb" (binary); "x"/"a" modes are not supported.
        open_kwargs: passed to `open` (e.g. `encoding`, `newline`).

    On an exception inside the block the temporary file is removed and `path` is left untouched.
    """
    if "w" not in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_write: unsupported mode {mode!r} (use 'w' or 'wb')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(final_dir: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of `final_dir`; on success move its contents into `final_dir`.

    replace=False: `final_dir` is created if missing; existing files in it with the same names are replaced
    (each by `os.replace`), other existing files are kept.
    replace=True: the whole old `final_dir` (if any) is swapped out for the new folder (two renames) and deleted.
    On an exception the temporary folder is deleted and `final_dir` is not touched (not even created).
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        yield tmp
        if replace and final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
        elif replace:
            os.replace(tmp, final)
        else:
            final.mkdir(parents=True, exist_ok=True)
            _move_tree(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _move_tree(src: Path, dst: Path) -> None:
    """Move every entry of `src` into `dst` (same filesystem), merging sub-folders."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if target.is_dir():
                _move_tree(entry, target)
                continue
            if target.exists():
                target.unlink()
            os.replace(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def check_writable(out: str | os.PathLike) -> None:
    """UserError unless `out` can be made (or replaced) here: creates and removes a file in the folder the
    output is built next to (the nearest existing folder above `out`), so that read-only places and paths
    under a regular file are refused before any work, also as root (where `os.access` says yes)."""
    from mslam_ns.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{out}: cannot be created ({parent} is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mslam_probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{out}: not writable ({e.strerror or e} in {parent})") from None
