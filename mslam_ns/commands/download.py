"""`mslam-ns download`: fetch the released MASt3R checkpoints into the cache (`mslam_ns.model.weights`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["download_command"]


def download_command(name: str = "all", cache_dir: Path | None = None, base_url: str | None = None) -> int:
    """Download the released MASt3R checkpoints (CC BY-NC-SA 4.0, non-commercial) into the cache.

    Args:
        name: Which file: mast3r (the network), retrieval, codebook, or all.
        cache_dir: Where to put them (default: $MSLAM_NS_CHECKPOINTS, else <mslam_ns cache>/checkpoints).
        base_url: Download from this base URL instead of the official one (default: $MSLAM_NS_WEIGHTS_URL).
    """
    from mslam_ns.model.weights import WEIGHTS, fetch, is_cached, weight_file

    names = list(WEIGHTS) if name == "all" else [weight_file(name).name]
    for n in names:
        entry = WEIGHTS[n]
        cached = is_cached(entry, cache_dir)
        path = fetch(entry, cache_dir, base_url)
        print(f"{n:<10} {path}" + (" (already cached)" if cached else ""))
    return 0
