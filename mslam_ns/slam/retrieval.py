"""Keyframe retrieval for loop closure and relocalisation: ASMK (the ``asmk`` package) over local features.

Each keyframe contributes the prior's local retrieval features (`TwoViewPrior.retrieval_features`, [K, F]
float32; MASt3R: the retrieval head's top-``nfeat`` whitened tokens, the oracle: patch descriptors at texture
peaks). ASMK quantises them against a codebook, aggregates the residuals per visual word, binarises them and
keeps them in an inverted file; a query scores every keyframe by the selective match kernel (docs/algorithm.md
section 5: binary kernel, no IDF, similarity threshold 0, alpha 3; 1 assignment when adding, 5 when querying).
Scores lie in [0, 1]; `RetrievalConfig.min_thresh` (5e-3) keeps what is above the noise of unrelated images.

Codebook:

- given (the official 64k-word codebook, `load_codebook`): fixed for the whole run;
- none: trained from the sequence's own features. Every added keyframe's features are kept until the
  codebook is final. The first ``add`` trains a small codebook (``stored features / train_feats_per_word``
  words, at least 8); whenever the stored features have doubled since the last training it is retrained
  with more words (up to ``codebook_words``) and the inverted file is rebuilt from the stored features, so
  early queries are already ASMK scores over all keyframes, just with a coarser vocabulary (at a handful of
  keyframes this is about as exact as a brute-force comparison). Once it has ``codebook_words`` words it is
  final and the stored features are released. Retraining is geometric, so its total cost is a few times
  one training.

Binary signatures are packed in 32-bit words, so the feature dimension F must be a multiple of 32 (pad bits
would always agree and bias every similarity upwards).

The database is safe to use from several threads (one lock). Cost (CPU, 256 features of 256 dims per
keyframe, 120 keyframes): ``query_and_add`` ~25 ms; the self-trained codebook's (re)trainings 10 ms .. 2 s
(the last, final one: 1024 words from 16k features).
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from pathlib import Path
from typing import Any

import asmk.codebook  # imported here (not lazily) so that a missing package fails at import, where
import asmk.index  # SlamSystem falls back to consecutive edges only
import asmk.inverted_file
import asmk.kernel
import numpy as np

from mslam_ns.config import RetrievalConfig
from mslam_ns.model.codebook import check_codebook, load_codebook, train_codebook

__all__ = ["RetrievalDatabase", "load_codebook"]

log = logging.getLogger(__name__)

_MIN_WORDS = 8
"""Smallest self-trained codebook."""
_RETRAIN_GROWTH = 2.0
"""Self-trained codebook: retrain when the stored features grew by this factor since the last training."""


def _as_feats(feats: Any) -> np.ndarray:  # [K, F] float32
    if hasattr(feats, "detach"):
        feats = feats.detach().to("cpu").float().numpy()
    x = np.ascontiguousarray(feats, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"RetrievalDatabase: features must be [K, F], got shape {x.shape}")
    if x.shape[1] % 32:
        raise ValueError(
            f"RetrievalDatabase: feature dimension {x.shape[1]} is not a multiple of 32 (binary "
            "ASMK signatures are packed in 32-bit words)"
        )
    if not np.isfinite(x).all():
        raise ValueError("RetrievalDatabase: features contain non-finite values")
    return x


class RetrievalDatabase:
    """ASMK database over keyframes (see the module docstring).

    ``db.query(feats)`` -> [(kf_id, score)] best first; ``db.add(kf_id, feats)``; ``db.query_and_add``;
    ``len(db)`` = keyframes added.
    """

    def __init__(self, cfg: RetrievalConfig | None = None, codebook: np.ndarray | None = None) -> None:
        """
        Args:
            cfg: retrieval settings (k, min_thresh, ASMK parameters, self-trained codebook size).
            codebook: [n_words, F] centroids (e.g. `load_codebook` of the official file); None trains one
                from the sequence's own features.
        """
        self.cfg = cfg if cfg is not None else RetrievalConfig()
        self._lock = threading.RLock()
        self._index_factory = asmk.index.initialize_index(None)  # faiss L2, CPU
        self._kf_ids: list[int] = []  # internal image id -> kf_id
        self._known: set[int] = set()
        self._fixed = codebook is not None
        self._store: list[np.ndarray] = []  # self-trained: features of every keyframe, until final
        self._n_stored = 0
        self._trained_on = 0  # stored features at the last training
        self._codebook: Any = None
        self._kernel: Any = None
        self._ivf: Any = None
        self.retrains = 0
        """How often a self-trained codebook was (re)trained."""
        if codebook is not None:
            self._set_codebook(check_codebook(np.asarray(codebook), "codebook"))

    # ------------------------------------------------------------------------------------------- public
    @classmethod
    def from_file(cls, cfg: RetrievalConfig | None, path: str | Path | None) -> RetrievalDatabase:
        """A database with the codebook file at ``path`` (UserError naming it if bad), or self-trained."""
        return cls(cfg, None if path is None else load_codebook(path))

    @property
    def codebook(self) -> np.ndarray | None:
        """Current centroids [n_words, F] (None before the first keyframe of a self-trained database)."""
        return None if self._codebook is None else self._codebook.centroids

    @property
    def self_trained(self) -> bool:
        return not self._fixed

    def __len__(self) -> int:
        return len(self._kf_ids)

    def query(self, feats: Any, k: int | None = None, min_score: float | None = None) -> list[tuple[int, float]]:
        """The best ``k`` keyframes (default ``cfg.k``) with score > ``min_score`` (default ``cfg.min_thresh``).

        Args:
            feats: [K, F] float32 local retrieval features of the query image.
        Returns:
            [(kf_id, score)], best first; nothing is excluded (the caller drops the query's own keyframe).
        """
        x = _as_feats(feats)
        with self._lock:
            return self._query(x, k, min_score)[0]

    def add(self, kf_id: int, feats: Any) -> None:
        """Add keyframe ``kf_id`` (unique) with its features [K, F]."""
        x = _as_feats(feats)
        with self._lock:
            self._add(int(kf_id), x, None)

    def query_and_add(
        self, kf_id: int, feats: Any, k: int | None = None, min_score: float | None = None
    ) -> list[tuple[int, float]]:
        """`query`, then `add` (the features are quantised once)."""
        x = _as_feats(feats)
        with self._lock:
            res, words = self._query(x, k, min_score)
            self._add(int(kf_id), x, words)
            return res

    # ------------------------------------------------------------------------------------------ internals
    def _set_codebook(self, centroids: np.ndarray) -> None:
        cdb = asmk.codebook.Codebook(self._index_factory, size=int(centroids.shape[0]))
        cdb.index(np.ascontiguousarray(centroids, dtype=np.float32))
        self._codebook = cdb
        self._kernel = asmk.kernel.ASMKKernel(cdb, binary=True)
        self._ivf = asmk.inverted_file.IVF.initialize_empty(use_idf=False, codebook_size=cdb.size)

    def _check_dim(self, x: np.ndarray) -> None:
        if self._codebook is not None and x.shape[1] != self._codebook.centroids.shape[1]:
            raise ValueError(
                f"RetrievalDatabase: features are {x.shape[1]}-dimensional, the codebook's words "
                f"{self._codebook.centroids.shape[1]}-dimensional"
            )

    def _words(self, x: np.ndarray, n: int) -> np.ndarray:  # [K, n] int64 nearest words, nearest first
        n = max(1, min(int(n), self._codebook.size))
        return self._codebook.quantize(x, multiple_assignment=n)[1]

    def _query(
        self, x: np.ndarray, k: int | None, min_score: float | None
    ) -> tuple[list[tuple[int, float]], np.ndarray | None]:
        k = self.cfg.k if k is None else int(k)
        thr = self.cfg.min_thresh if min_score is None else float(min_score)
        if self._codebook is None or len(x) == 0:
            return [], None
        self._check_dim(x)
        words = self._words(x, self.cfg.query_assignments)
        if self._ivf.n_images == 0 or k <= 0:
            return [], words
        ades, uw = self._kernel.aggregate_image(x, words)
        sim = partial(self._kernel.similarity, alpha=self.cfg.alpha, similarity_threshold=self.cfg.sim_thresh)
        ranks, scores = self._ivf.search(ades, uw, similarity_func=sim, topk=int(self._ivf.n_images))
        out = [(self._kf_ids[int(r)], float(s)) for r, s in zip(ranks, scores) if s > thr]
        return out[:k], words

    def _add(self, kf_id: int, x: np.ndarray, words: np.ndarray | None) -> None:
        if kf_id in self._known:
            raise ValueError(f"RetrievalDatabase: keyframe {kf_id} was added already")
        self._check_dim(x)
        self._known.add(kf_id)
        self._kf_ids.append(kf_id)
        image = len(self._kf_ids) - 1
        if not self._fixed and self._store is not None:
            self._store.append(x.copy())  # the caller's array may change
            self._n_stored += len(x)
            if self._needs_training():
                self._retrain()  # indexes every stored keyframe, this one included
                return
        self._index(image, x, None if words is None else words[:, : self.cfg.add_assignments])

    def _index(self, image: int, x: np.ndarray, words: np.ndarray | None) -> None:
        if len(x) == 0 or self._codebook is None:
            return
        if words is None:
            words = self._words(x, self.cfg.add_assignments)
        ades, uw = self._kernel.aggregate_image(x, words)
        self._ivf.add(ades, uw, np.full(len(uw), image, dtype=np.int64))

    def _needs_training(self) -> bool:
        n = self._n_stored
        if n < _MIN_WORDS:
            return False
        return self._codebook is None or n >= _RETRAIN_GROWTH * self._trained_on

    def _retrain(self) -> None:
        allf = np.concatenate(self._store, axis=0)
        n_words = int(min(self.cfg.codebook_words, max(_MIN_WORDS, len(allf) // self.cfg.train_feats_per_word)))
        centroids = train_codebook(allf, n_words, seed=self.retrains)
        self._set_codebook(centroids)
        self._trained_on = len(allf)
        self.retrains += 1
        for image, x in enumerate(self._store):
            self._index(image, x, None)
        final = n_words >= self.cfg.codebook_words
        log.debug(
            "retrieval codebook trained: %d words from %d features of %d keyframes%s",
            n_words,
            len(allf),
            len(self._store),
            " (final)" if final else "",
        )
        if final:
            self._store = None  # type: ignore[assignment]  # nothing more to train on
