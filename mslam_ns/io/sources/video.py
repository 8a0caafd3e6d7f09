"""Video files through PyAV (bundled FFmpeg): real container timestamps, lazy sequential decoding.

Opening scans the packets (no decoding) for the frame count and presentation timestamps
(`pts * time_base`, seconds) and decodes the first frame to check the file and learn the frame size.
Frames are decoded on demand: reading forward continues the running decoder, reading backwards restarts it
from the beginning (random access is therefore sequential decoding); the last few frames are cached.
A display rotation recorded in the file (phone videos) is applied, so frames come out upright.
Not thread-safe (one running decoder per source).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.io.calibration import load_calibration
from mslam_ns.io.frames import FrameSource

__all__ = ["VideoSource", "VIDEO_EXTS"]

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is installed with the project
        raise UserError("reading videos needs PyAV: pip install av") from None
    return av


class VideoSource(FrameSource):
    """Frames of the first video stream of a container file; names `frame_000123` (original frame number)."""

    kind = "video"
    cache_size = 8

    def __init__(self, path: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
        self._av = _import_av()
        path = Path(path)
        pts = self._scan(path)  # [M] seconds, presentation order
        super().__init__(
            path,
            timestamps=pts,
            names=[f"frame_{k:06d}" for k in range(len(pts))],
            stride=stride,
            max_frames=max_frames,
        )
        self._container = None
        self._frames = None  # running decode generator
        self._next = 0  # frame number the running decoder yields next
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._wanted = set(int(s) for s in self._sel)  # frame numbers worth converting to RGB
        first = self._read_image(int(self._sel[0]))
        self._size = (first.shape[1], first.shape[0])
        self._finish_intrinsics(load_calibration(calib) if calib is not None else None, calib)

    # -- opening ----------------------------------------------------------------------------------------------
    def _open(self, path: Path):
        av = self._av
        try:
            container = av.open(str(path), mode="r")
        except FileNotFoundError:
            raise UserError(f"{path}: video file not found") from None
        except (av.FFmpegError, OSError, ValueError) as e:
            raise UserError(f"{path}: cannot open video ({_why(e)})") from None
        if not container.streams.video:
            container.close()
            raise UserError(f"{path}: no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def _scan(self, path: Path) -> np.ndarray:
        """Presentation timestamps (seconds, sorted) of every packet of the video stream, without decoding."""
        av = self._av
        container, stream = self._open(path)
        raw: list[int | None] = []
        try:
            # read while the container is open (PyAV >= 18.1.1 refuses stream attributes after close())
            tb = float(stream.time_base) if stream.time_base is not None else None
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packet
                    continue
                raw.append(packet.pts)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise UserError(f"{path}: corrupt video ({_why(e)})") from None
        finally:
            container.close()
        if any(p is None for p in raw) or len(set(raw)) != len(raw):
            # no usable timestamps: fall back to the nominal frame rate
            self._raw_pts = None
            return np.arange(len(raw), dtype=np.float64) / rate
        ordered = sorted(raw)  # decode order -> presentation order
        self._raw_pts = {p: k for k, p in enumerate(ordered)}
        if tb is None:
            raise UserError(f"{path}: corrupt video (its stream has no time base)")
        return np.asarray(ordered, dtype=np.float64) * tb

    # -- decoding ---------------------------------------------------------------------------------------------
    def _restart(self) -> None:
        self.close()
        self._container, stream = self._open(self.path)
        self._frames = self._container.decode(stream)
        self._next = 0

    def close(self) -> None:
        """Release the decoder (reopened automatically on the next read)."""
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._next = None, None, 0

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k].copy()
        if self._frames is None or k < self._next:
            self._restart()
        av = self._av
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                self.close()
                raise UserError(f"{self.path}: frame {k} could not be decoded (file truncated or corrupt)") from None
            except (av.FFmpegError, OSError, ValueError) as e:
                self.close()
                raise UserError(f"{self.path}: corrupt video at frame {self._next} ({_why(e)})") from None
            num = self._raw_pts.get(frame.pts, self._next) if self._raw_pts is not None else self._next
            self._next = num + 1
            if num in self._wanted or num == k:
                img = frame.to_ndarray(format="rgb24")
                rot = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
                if rot:
                    img = np.ascontiguousarray(np.rot90(img, k=rot))
                self._cache[num] = img
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            if num == k:
                return self._cache[k].copy()  # callers may modify their frame; the cache must not change
            if num > k:
                raise UserError(f"{self.path}: frame {k} could not be decoded (file truncated or corrupt)")


def _why(e: Exception) -> str:
    """A short reason from an FFmpeg error, without the file name repeated."""
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(":")[-1].strip() if msg else type(e).__name__
