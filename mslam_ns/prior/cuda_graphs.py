"""CUDA graphs for the network calls whose shapes are fixed for a whole run (`--cuda-graphs`).

A video's frames all have one size, so the encoder, the tracking decode and the backend's symmetric decode
each see one input signature per run. `GraphedCall` captures a function the first time it meets a
signature (after a few warm-up calls on a side stream, as CUDA graphs need) and afterwards only copies the
new inputs into the captured buffers and replays: one launch instead of the ~1000 kernel launches of a
ViT-L decode, which on a fast GPU cost about as much as the arithmetic at 512x384.

The returned tensors are copies: the captured output buffers are overwritten by the next replay. A call
is serialised with a lock (the backend thread and the tracker share the prior). A capture that fails (an
operation CUDA cannot record) is logged once and that signature runs eagerly from then on.

``capture`` is pluggable: `cuda_capture` records a real graph; `eager_capture` (the CPU twin, for tests
and CPU runs of the same code path) keeps the static buffers, copy-in and copy-out, and re-runs the
function on replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map_only

log = logging.getLogger(__name__)

__all__ = ["GraphedCall", "cuda_capture", "eager_capture"]

#: one capture at a time in the process (the tracker and the backend thread may both meet a new signature)
_CAPTURE_LOCK = threading.Lock()
#: (static inputs, replay(), static outputs) of one captured signature
Captured = tuple[list[Tensor], Callable[[], None], Any]


def cuda_capture(fn: Callable[..., Any], static: list[Tensor], warmup: int = 2) -> tuple[Callable[[], None], Any]:
    """Record ``fn(*static)`` as a CUDA graph: (replay, static outputs). ``warmup`` eager calls first, on a
    side stream (they fill lazily built caches and the allocator's pools outside the capture)."""
    side = torch.cuda.Stream(device=static[0].device)
    side.wait_stream(torch.cuda.current_stream(static[0].device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream(static[0].device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the other SLAM thread's eager CUDA work does not invalidate this capture
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = fn(*static)
    return graph.replay, out


def eager_capture(fn: Callable[..., Any], static: list[Tensor], warmup: int = 2) -> tuple[Callable[[], None], Any]:
    """The CPU twin of `cuda_capture`: static output buffers refreshed in place by re-running ``fn``."""
    for _ in range(warmup):
        fn(*static)
    out = tree_map_only(Tensor, torch.clone, fn(*static))  # dense buffers (an output may be an expanded view)
    leaves = tree_leaves(out)

    def replay() -> None:
        for buf, new in zip(leaves, tree_leaves(fn(*static))):
            buf.copy_(new)

    return replay, out


class GraphedCall:
    """``fn(key, *tensors)`` with one captured graph per (key, tensor shapes / dtypes / devices).

    ``key`` is any hashable value the function's shapes depend on beyond its tensors' (e.g. the image size);
    ``fn`` must be a pure function of its tensors' values (the captured kernels see only the static copies).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        capture: Callable[[Callable[..., Any], list[Tensor]], tuple[Callable[[], None], Any]] = cuda_capture,
        name: str = "call",
    ) -> None:
        self.fn = fn
        self.capture = capture
        self.name = name
        self._entries: dict[Hashable, Captured | None] = {}  # None: capture failed, run eagerly
        self._lock = threading.Lock()

    @property
    def captured(self) -> int:
        """How many signatures run as graphs."""
        return sum(e is not None for e in self._entries.values())

    def __call__(self, key: Hashable, *args: Tensor) -> Any:
        sig = (key, *((tuple(a.shape), a.dtype, str(a.device)) for a in args))
        with self._lock:
            if sig not in self._entries:
                self._entries[sig] = self._capture(key, args)
            entry = self._entries[sig]
            if entry is None:
                return self.fn(key, *args)
            static_in, replay, static_out = entry
            for buf, a in zip(static_in, args):
                buf.copy_(a)
            replay()
            return tree_map_only(Tensor, torch.clone, static_out)  # the next replay overwrites the captured outputs

    def _capture(self, key: Hashable, args: tuple[Tensor, ...]) -> Captured | None:
        static = [a.clone() for a in args]
        try:
            with _CAPTURE_LOCK:
                replay, out = self.capture(lambda *t: self.fn(key, *t), static)
        except RuntimeError as e:  # an operation CUDA cannot record: this signature runs eagerly
            log.warning("CUDA graph capture of %s failed (%s): running it without a graph", self.name, e)
            return None
        return static, replay, out
