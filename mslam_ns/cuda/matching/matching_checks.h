// Input checks of the matching kernels: one function per kernel, called by the CPU binding
// (matching_cpu.cpp) and the CUDA binding (matching_cuda.cu) with the device each serves.
#pragma once

#include <cstdint>

#include "checks.h"

namespace mslam::matching {

struct IprojDims {
  int64_t B, H, W, N;
};

// rays [B, H, W, 9] float32 (H, W >= 3), targets [B, N, 3] float32, p_init [B, N, 2] float32.
inline IprojDims check_iproj(const at::Tensor& rays, const at::Tensor& targets, const at::Tensor& p_init,
                             c10::DeviceType dev) {
  MSLAM_CHECK_INPUT(rays, dev, "rays_img");
  MSLAM_CHECK_INPUT(targets, dev, "targets");
  MSLAM_CHECK_INPUT(p_init, dev, "p_init");
  MSLAM_CHECK_DIM(rays, 4, "rays_img", "[B, H, W, 9] float32");
  MSLAM_CHECK_SIZE(rays, 3, 9, "rays_img", "[B, H, W, 9] float32");
  MSLAM_CHECK_DTYPE(rays, at::kFloat, "rays_img");
  const IprojDims d{rays.size(0), rays.size(1), rays.size(2), targets.dim() == 3 ? targets.size(1) : -1};
  TORCH_CHECK(d.H >= 3 && d.W >= 3, "rays_img must be at least 3x3");
  MSLAM_CHECK_DIM(targets, 3, "targets", "[B, N, 3] float32");
  MSLAM_CHECK_SIZE(targets, 0, d.B, "targets", "[B, N, 3] float32");
  MSLAM_CHECK_SIZE(targets, 2, 3, "targets", "[B, N, 3] float32");
  MSLAM_CHECK_DTYPE(targets, at::kFloat, "targets");
  MSLAM_CHECK_DIM(p_init, 3, "p_init", "[B, N, 2] float32");
  MSLAM_CHECK_SIZE(p_init, 0, d.B, "p_init", "[B, N, 2] float32");
  MSLAM_CHECK_SIZE(p_init, 1, d.N, "p_init", "[B, N, 2] float32");
  MSLAM_CHECK_SIZE(p_init, 2, 2, "p_init", "[B, N, 2] float32");
  MSLAM_CHECK_DTYPE(p_init, at::kFloat, "p_init");
  return d;
}

struct ProjectDims {
  int64_t B, H, W, N;
};

// X_i [B, H, W, 3] float32 (H, W >= 3), pts [B, N, 3] float32, K and K_inv [B, 3, 3] float32.
inline ProjectDims check_project(const at::Tensor& X_i, const at::Tensor& pts, const at::Tensor& K,
                                 const at::Tensor& K_inv, c10::DeviceType dev) {
  MSLAM_CHECK_INPUT(X_i, dev, "X_i");
  MSLAM_CHECK_INPUT(pts, dev, "pts");
  MSLAM_CHECK_INPUT(K, dev, "K");
  MSLAM_CHECK_INPUT(K_inv, dev, "K_inv");
  MSLAM_CHECK_DIM(X_i, 4, "X_i", "[B, H, W, 3] float32");
  MSLAM_CHECK_SIZE(X_i, 3, 3, "X_i", "[B, H, W, 3] float32");
  MSLAM_CHECK_DTYPE(X_i, at::kFloat, "X_i");
  const ProjectDims d{X_i.size(0), X_i.size(1), X_i.size(2), pts.dim() == 3 ? pts.size(1) : -1};
  TORCH_CHECK(d.H >= 3 && d.W >= 3, "X_i must be at least 3x3");
  MSLAM_CHECK_DIM(pts, 3, "pts", "[B, N, 3] float32");
  MSLAM_CHECK_SIZE(pts, 0, d.B, "pts", "[B, N, 3] float32");
  MSLAM_CHECK_SIZE(pts, 2, 3, "pts", "[B, N, 3] float32");
  MSLAM_CHECK_DTYPE(pts, at::kFloat, "pts");
  const auto check_3x3 = [&](const at::Tensor& m, const char* name) {
    MSLAM_CHECK_DIM(m, 3, name, "[B, 3, 3] float32");
    MSLAM_CHECK_SIZE(m, 0, d.B, name, "[B, 3, 3] float32");
    MSLAM_CHECK_SIZE(m, 1, 3, name, "[B, 3, 3] float32");
    MSLAM_CHECK_SIZE(m, 2, 3, name, "[B, 3, 3] float32");
    MSLAM_CHECK_DTYPE(m, at::kFloat, name);
  };
  check_3x3(K, "K");
  check_3x3(K_inv, "K_inv");
  return d;
}

struct RefineDims {
  int64_t B, H, W, F, N;
};

// D_i [B, H, W, F] float32 or float16, D_j [B, N, F] with D_i's dtype, p [B, N, 2] int64,
// 0 <= radius <= 64, dilation_max >= 0.
inline RefineDims check_refine(const at::Tensor& D_i, const at::Tensor& D_j, const at::Tensor& p, int64_t radius,
                               int64_t dilation_max, c10::DeviceType dev) {
  MSLAM_CHECK_INPUT(D_i, dev, "D_i");
  MSLAM_CHECK_INPUT(D_j, dev, "D_j");
  MSLAM_CHECK_INPUT(p, dev, "p");
  MSLAM_CHECK_DIM(D_i, 4, "D_i", "[B, H, W, F]");
  TORCH_CHECK(D_i.scalar_type() == at::kFloat || D_i.scalar_type() == at::kHalf, "D_i must be float32 or float16");
  const RefineDims d{D_i.size(0), D_i.size(1), D_i.size(2), D_i.size(3), D_j.dim() == 3 ? D_j.size(1) : -1};
  MSLAM_CHECK_DIM(D_j, 3, "D_j", "[B, N, F] with D_i's dtype");
  MSLAM_CHECK_SIZE(D_j, 0, d.B, "D_j", "[B, N, F] with D_i's dtype");
  MSLAM_CHECK_SIZE(D_j, 2, d.F, "D_j", "[B, N, F] with D_i's dtype");
  MSLAM_CHECK_DTYPE(D_j, D_i.scalar_type(), "D_j");
  MSLAM_CHECK_DIM(p, 3, "p", "[B, N, 2] int64");
  MSLAM_CHECK_SIZE(p, 0, d.B, "p", "[B, N, 2] int64");
  MSLAM_CHECK_SIZE(p, 1, d.N, "p", "[B, N, 2] int64");
  MSLAM_CHECK_SIZE(p, 2, 2, "p", "[B, N, 2] int64");
  MSLAM_CHECK_DTYPE(p, at::kLong, "p");
  TORCH_CHECK(radius >= 0 && radius <= 64 && dilation_max >= 0, "need 0 <= radius <= 64, dilation_max >= 0");
  return d;
}

// The optional mask of refine_matches: [B, N] bool (the points to refine), on the kernel's device.
inline void check_refine_mask(const c10::optional<at::Tensor>& mask, const RefineDims& d, c10::DeviceType dev) {
  if (!mask.has_value()) return;
  const at::Tensor& m = *mask;
  MSLAM_CHECK_INPUT(m, dev, "mask");
  MSLAM_CHECK_DIM(m, 2, "mask", "[B, N] bool");
  MSLAM_CHECK_SIZE(m, 0, d.B, "mask", "[B, N] bool");
  MSLAM_CHECK_SIZE(m, 1, d.N, "mask", "[B, N] bool");
  MSLAM_CHECK_DTYPE(m, at::kBool, "mask");
}

}  // namespace mslam::matching
