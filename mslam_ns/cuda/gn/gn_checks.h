// Input checks of the Gauss-Newton kernels: one function per kernel, called by the CPU binding (gn_cpu.cpp)
// and the CUDA binding (gn_cuda.cu) with the device each serves.
#pragma once

#include <cstdint>
#include <vector>

#include "checks.h"
#include "gn.h"

namespace mslam::gn {

struct EdgeDims {
  int64_t N, HW, E;
};

// Twc [N, 8], X [N, HW, 3], C [N, HW], Q [E, HW] (all float32 or all float64), ii / jj [E] int64,
// idx [E, HW] int64, valid [E, HW] bool; kNumParams parameters; mode 0 (rays), 1 (calib) or 2 (points).
inline EdgeDims check_edge_normal_equations(int64_t mode, const at::Tensor& Twc, const at::Tensor& X,
                                            const at::Tensor& C, const at::Tensor& ii, const at::Tensor& jj,
                                            const at::Tensor& idx, const at::Tensor& valid, const at::Tensor& Q,
                                            const std::vector<double>& params, c10::DeviceType dev) {
  MSLAM_CHECK_INPUT(Twc, dev, "Twc");
  MSLAM_CHECK_INPUT(X, dev, "X");
  MSLAM_CHECK_INPUT(C, dev, "C");
  MSLAM_CHECK_INPUT(ii, dev, "ii");
  MSLAM_CHECK_INPUT(jj, dev, "jj");
  MSLAM_CHECK_INPUT(idx, dev, "idx");
  MSLAM_CHECK_INPUT(valid, dev, "valid");
  MSLAM_CHECK_INPUT(Q, dev, "Q");
  TORCH_CHECK(params.size() == static_cast<size_t>(kNumParams), "expected ", kNumParams, " parameters");
  TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (rays), 1 (calib) or 2 (points)");
  TORCH_CHECK(X.scalar_type() == at::kFloat || X.scalar_type() == at::kDouble, "X must be float32 or float64");
  MSLAM_CHECK_DIM(X, 3, "X", "[N, HW, 3]");
  MSLAM_CHECK_SIZE(X, 2, 3, "X", "[N, HW, 3]");
  const EdgeDims d{X.size(0), X.size(1), ii.dim() == 1 ? ii.size(0) : -1};
  TORCH_CHECK(d.HW < (int64_t(1) << 31), "at most 2^31 - 1 pixels per pointmap");
  MSLAM_CHECK_DIM(Twc, 2, "Twc", "[N, 8]");
  MSLAM_CHECK_SIZE(Twc, 0, d.N, "Twc", "[N, 8]");
  MSLAM_CHECK_SIZE(Twc, 1, 8, "Twc", "[N, 8]");
  MSLAM_CHECK_DIM(C, 2, "C", "[N, HW]");
  MSLAM_CHECK_SIZE(C, 0, d.N, "C", "[N, HW]");
  MSLAM_CHECK_SIZE(C, 1, d.HW, "C", "[N, HW]");
  for (const at::Tensor* t : {&Twc, &C, &Q}) MSLAM_CHECK_DTYPE(*t, X.scalar_type(), "Twc, C and Q (X's dtype)");
  MSLAM_CHECK_DIM(ii, 1, "ii", "[E] int64");
  MSLAM_CHECK_DTYPE(ii, at::kLong, "ii");
  MSLAM_CHECK_DIM(jj, 1, "jj", "[E] int64");
  MSLAM_CHECK_SIZE(jj, 0, d.E, "jj", "[E] int64");
  MSLAM_CHECK_DTYPE(jj, at::kLong, "jj");
  for (const at::Tensor* t : {&idx, &valid, &Q}) {
    MSLAM_CHECK_DIM(*t, 2, "idx, valid and Q", "[E, HW]");
    MSLAM_CHECK_SIZE(*t, 0, d.E, "idx, valid and Q", "[E, HW]");
    MSLAM_CHECK_SIZE(*t, 1, d.HW, "idx, valid and Q", "[E, HW]");
  }
  MSLAM_CHECK_DTYPE(idx, at::kLong, "idx");
  MSLAM_CHECK_DTYPE(valid, at::kBool, "valid");
  return d;
}

// Twc [N, 8] float32 / float64, dx [N, 7] or [N - n_fixed, 7] of Twc's dtype, 0 <= n_fixed <= N.
inline int64_t check_pose_retract(const at::Tensor& Twc, const at::Tensor& dx, int64_t n_fixed,
                                  c10::DeviceType dev) {
  MSLAM_CHECK_INPUT(Twc, dev, "Twc");
  MSLAM_CHECK_INPUT(dx, dev, "dx");
  TORCH_CHECK(Twc.scalar_type() == at::kFloat || Twc.scalar_type() == at::kDouble,
              "Twc must be float32 or float64");
  MSLAM_CHECK_DIM(Twc, 2, "Twc", "[N, 8]");
  MSLAM_CHECK_SIZE(Twc, 1, 8, "Twc", "[N, 8]");
  const int64_t N = Twc.size(0);
  TORCH_CHECK(n_fixed >= 0 && n_fixed <= N, "need 0 <= n_fixed <= N");
  MSLAM_CHECK_DIM(dx, 2, "dx", "[N, 7] or [N - n_fixed, 7]");
  MSLAM_CHECK_SIZE(dx, 1, 7, "dx", "[N, 7] or [N - n_fixed, 7]");
  TORCH_CHECK(dx.size(0) == N || dx.size(0) == N - n_fixed, "dx must be [N, 7] or [N - n_fixed, 7]");
  MSLAM_CHECK_DTYPE(dx, Twc.scalar_type(), "dx");
  return N;
}

}  // namespace mslam::gn
