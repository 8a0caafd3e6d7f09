"""mslam_ns: dense monocular SLAM with the MASt3R two-view prior, as a Nerfstudio plugin.

Importing this package is cheap: it never compiles kernels, never imports nerfstudio and never needs CUDA.
The main entry point is :class:`mslam_ns.slam.system.SlamSystem` (imported lazily on attribute access).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
