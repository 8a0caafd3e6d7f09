// Shared definitions for the per-element kernel bodies, usable from host (C++) and device (CUDA) code.
#pragma once

#if defined(__CUDACC__)
#define MSLAM_HD __host__ __device__ __forceinline__
#else
#define MSLAM_HD inline
#endif

#include <cmath>
