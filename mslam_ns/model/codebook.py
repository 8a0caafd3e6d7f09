"""ASMK codebooks: read the official codebook pickle safely, or train one from a sequence's own features.

The official MASt3R retrieval codebook (``..._retrieval_codebook.pkl``) is the ``state_dict`` of an
``asmk.codebook.Codebook``: ``{'type': 'Codebook', 'params': {'size': '64k'}, 'state': {'centroids':
ndarray [65536, 1024] float32}}``. A pickle can run arbitrary code when it is loaded, so `load_codebook` reads it
with a restricted unpickler that admits numpy arrays (and their dtypes) and plain containers only; anything
else ends in a `UserError` naming the file and what was found, before any of it is called.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.errors import UserError

__all__ = ["load_codebook", "train_codebook", "check_codebook", "RestrictedUnpickler", "RefusedGlobal"]

log = logging.getLogger(__name__)

# (module, name) pairs a codebook pickle may reference: numpy's array reconstruction (numpy 1 and 2 module
# names), dtypes, numpy scalars, bytes decoding of protocol-2 pickles, and plain containers.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]  # pickle protocol 5
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    + [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex")]
)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the safe set (its name is the message); nothing was called."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; any other global raises `RefusedGlobal`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (the second: an empty one)
# How a codebook pickle can start: PROTO (protocol 2 and later) or, for protocols 0 and 1, MARK, EMPTY_DICT,
# EMPTY_LIST (a dict or a list) and GLOBAL (an array's reconstructor).
_PICKLE_STARTS = b"\x80(}]c"


def _format_of(p: Path) -> str:
    """'npy', 'npz' or 'pickle', from the file's first bytes (whatever its name); UserError otherwise."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
    except OSError as e:
        raise UserError(f"{p}: cannot read codebook ({e.strerror or e})") from None
    if not head:
        raise UserError(f"{p}: not a codebook (the file is empty)")
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head[0] in _PICKLE_STARTS:
        return "pickle"
    raise UserError(f"{p}: not a codebook (neither a pickle of a dict or an array, an .npy nor an .npz file)")


def _centroids_of(obj: Any) -> Any:
    """The centroid array inside an official codebook state_dict, a ``{'centroids': ...}`` dict or an array."""
    if isinstance(obj, dict):
        state = obj.get("state")
        if isinstance(state, dict) and "centroids" in state:
            return state["centroids"]
        if "centroids" in obj:
            return obj["centroids"]
        raise ValueError(f"a dict with keys {sorted(map(str, obj))[:8]} and no 'centroids'")
    return obj


def check_codebook(c: Any, where: str = "codebook", dim: int | None = None) -> np.ndarray:
    """``c`` as a C-contiguous float32 [n_words, F] array; UserError ``where: ...`` when it is not one."""
    if not isinstance(c, np.ndarray):
        raise UserError(
            f"{where}: not an ASMK codebook (expected a [n_words, F] float array, found {type(c).__name__})"
        )
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] < 1:
        raise UserError(f"{where}: codebook must be a [n_words >= 2, F] array, found shape {tuple(c.shape)}")
    if c.dtype.kind != "f":
        raise UserError(f"{where}: codebook must hold floats, found dtype {c.dtype}")
    if dim is not None and c.shape[1] != dim:
        raise UserError(f"{where}: codebook has {c.shape[1]}-dimensional words, the retrieval features are {dim}-d")
    if not np.isfinite(c).all():
        raise UserError(f"{where}: codebook contains non-finite values")
    return np.ascontiguousarray(c, dtype=np.float32)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_codebook(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """Read an ASMK codebook [n_words, F] float32 from a pickle (official layout), ``.npy`` or ``.npz`` file.

    The format is told by the file's first bytes (the numpy magic, a zip archive, the pickle PROTO opcode), so
    random bytes or a file of another kind are reported as such before anything is parsed.

    Args:
        path: the file.
        dim: expected word dimension F (the retrieval features'), or None to accept any.
    Raises:
        UserError naming the file: missing or unreadable, a pickle that references anything but numpy arrays
        and plain containers (nothing from it is run), or not a [n_words, F] float array.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: codebook file not found")
    kind = _format_of(p)
    try:
        if kind == "npy":
            obj: Any = np.load(p, allow_pickle=False)
        elif kind == "npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                obj = z["centroids"] if "centroids" in keys else (z[keys[0]] if len(keys) == 1 else dict(z))
        else:
            with open(p, "rb") as fh:
                obj = RestrictedUnpickler(fh).load()
    except RefusedGlobal as e:
        raise UserError(
            f"{p}: refused to load: the pickle references {e} (a codebook holds only numpy arrays "
            "and plain containers; nothing from the file was run)"
        ) from None
    except pickle.UnpicklingError as e:
        raise UserError(f"{p}: not a readable codebook (a damaged pickle: {_first_line(e)})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise UserError(f"{p}: not a readable codebook ({type(e).__name__}: {_first_line(e)})") from None
    try:
        c = _centroids_of(obj)
    except ValueError as e:
        raise UserError(f"{p}: not an ASMK codebook ({e})") from None
    out = check_codebook(c, str(p), dim)
    if dim is not None:  # only once fully checked: a codebook refused later ends in its one error line alone
        log.info("codebook %s: %d words of dimension %d", p, out.shape[0], out.shape[1])
    return out


def train_codebook(feats: np.ndarray, n_words: int, seed: int = 0, niter: int = 10) -> np.ndarray:
    """k-means (faiss, L2) centroids [n_words, F] float32 of the features [N, F] (N >= n_words)."""
    import faiss

    x = np.ascontiguousarray(feats, dtype=np.float32)
    if x.ndim != 2 or len(x) < n_words:
        raise ValueError(f"train_codebook: need >= {n_words} features [N, F], got {x.shape}")
    km = faiss.Clustering(x.shape[1], int(n_words))
    km.niter = int(niter)
    km.seed = int(seed) + 1234
    km.verbose = False
    km.max_points_per_centroid = 256  # faiss subsamples above this; keeps training time bounded
    km.min_points_per_centroid = 1  # small codebooks early in a sequence: no warning
    index = faiss.IndexFlatL2(x.shape[1])
    km.train(x, index)
    return faiss.vector_float_to_array(km.centroids).reshape(int(n_words), x.shape[1]).astype(np.float32)
