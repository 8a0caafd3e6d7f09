// Input checks of the kernel bindings (host code only), shared by every CPU (.cpp) and CUDA (.cu) build.
//
// Each kernel has ONE check function, in its feature folder's *_checks.h (matching/matching_checks.h,
// gn/gn_checks.h), written with these macros and called once by the CPU binding and once by the CUDA
// binding with the device they serve: the two builds never re-state the rules. The Python wrappers
// (mslam_ns.cuda.matching, mslam_ns.cuda.gn) have already checked values (finiteness, index ranges) and made
// every input contiguous; these checks guard the C++ boundary (shapes, dtypes, devices, layout).
#pragma once

#include <torch/extension.h>

// `t` lives on device type `dev` (c10::DeviceType::CPU / CUDA).
#define MSLAM_CHECK_DEVICE(t, dev, name) \
  TORCH_CHECK((t).device().type() == (dev), name, " must be a ", c10::DeviceTypeName(dev), " tensor, got ", \
              (t).device())

#define MSLAM_CHECK_CONTIGUOUS(t, name) TORCH_CHECK((t).is_contiguous(), name, " must be contiguous")

// Device and layout of a kernel input.
#define MSLAM_CHECK_INPUT(t, dev, name) \
  do {                                  \
    MSLAM_CHECK_DEVICE(t, dev, name);   \
    MSLAM_CHECK_CONTIGUOUS(t, name);    \
  } while (0)

#define MSLAM_CHECK_DTYPE(t, dtype, name) \
  TORCH_CHECK((t).scalar_type() == (dtype), name, " must be ", c10::toString(dtype), ", got ", (t).scalar_type())

// `t` has `ndim_` dimensions / dimension `dim_` has `len_` entries (the message names the expected layout).
#define MSLAM_CHECK_DIM(t, ndim_, name, layout) TORCH_CHECK((t).dim() == (ndim_), name, " must be ", layout)
#define MSLAM_CHECK_SIZE(t, dim_, len_, name, layout) \
  TORCH_CHECK((t).size(dim_) == (len_), name, " must be ", layout)
