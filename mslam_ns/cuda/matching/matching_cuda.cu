// CUDA build of the matching kernels: grid-stride loops over (batch, point) around the per-element bodies of
// matching.h (the same bodies the CPU build runs). The Python wrapper (mslam_ns.cuda.matching) has checked
// shapes, dtypes and finiteness and made every input contiguous; each binding guards the C++ boundary with its
// kernel's one check function (matching_checks.h, shared with the CPU build).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "matching/matching.h"
#include "matching/matching_checks.h"

namespace {

using mslam::matching::IprojParams;
using mslam::matching::ProjectParams;
using mslam::matching::RefineParams;

constexpr int kThreads = 256;

int num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

__global__ void iproj_kernel(const float* __restrict__ img,  // [B, H, W, 9]
                             const float* __restrict__ tgt,  // [B, N, 3]
                             const float* __restrict__ p0,   // [B, N, 2]
                             float* __restrict__ pout,       // [B, N, 2]
                             bool* __restrict__ conv,        // [B, N]
                             int64_t B, int64_t N, int H, int W, IprojParams prm) {
  const int64_t total = B * N;
  const int64_t img_stride = static_cast<int64_t>(H) * W * 9;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = i / N;
    const float t[3] = {tgt[i * 3], tgt[i * 3 + 1], tgt[i * 3 + 2]};
    mslam::matching::iproj_point(img + b * img_stride, H, W, t, p0[i * 2], p0[i * 2 + 1], prm, pout + i * 2,
                                 pout + i * 2 + 1, conv + i);
  }
}

__global__ void project_kernel(const float* __restrict__ Xi,  // [B, H, W, 3]
                               const float* __restrict__ x,   // [B, N, 3]
                               const float* __restrict__ k,   // [B, 3, 3]
                               const float* __restrict__ ki,  // [B, 3, 3]
                               int64_t* __restrict__ pout,    // [B, N, 2]
                               bool* __restrict__ ok,         // [B, N]
                               int64_t B, int64_t N, int H, int W, ProjectParams prm) {
  const int64_t total = B * N;
  const int64_t img_stride = static_cast<int64_t>(H) * W * 3;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t b = i / N;
    const auto cam = mslam::matching::project_camera(k + b * 9, ki + b * 9);
    mslam::matching::project_point(Xi + b * img_stride, H, W, cam, x + i * 3, prm, pout + i * 2, pout + i * 2 + 1,
                                   ok + i);
  }
}

template <typename T>
__global__ void refine_kernel(const T* __restrict__ Di,         // [B, H, W, F]
                              const T* __restrict__ Dj,         // [B, N, F]
                              const int64_t* __restrict__ pin,  // [B, N, 2]
                              int64_t* __restrict__ pout,       // [B, N, 2]
                              const bool* __restrict__ keep,    // [B, N] points to refine, or null: all
                              int64_t B, int64_t N, int H, int W, int F, RefineParams prm) {
  const int64_t total = B * N;
  const int64_t img_stride = static_cast<int64_t>(H) * W * F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pu = pin[i * 2], pv = pin[i * 2 + 1];
    if (keep != nullptr && !keep[i]) {  // masked out: returned as given
      pout[i * 2] = pu;
      pout[i * 2 + 1] = pv;
      continue;
    }
    const int64_t b = i / N;
    // Clamp in 64 bits before narrowing to int (the body clamps again into the image).
    int u = static_cast<int>(pu < 0 ? 0 : (pu > W - 1 ? W - 1 : pu));
    int v = static_cast<int>(pv < 0 ? 0 : (pv > H - 1 ? H - 1 : pv));
    const mslam::matching::LaneScorer<0, T, T> scorer{Di + b * img_stride, Dj + i * F, W, F};
    mslam::matching::refine_point(scorer, H, W, prm, &u, &v);
    pout[i * 2] = u;
    pout[i * 2 + 1] = v;
  }
}

std::tuple<at::Tensor, at::Tensor> iproj(const at::Tensor& rays,     // [B, H, W, 9] float32
                                         const at::Tensor& targets,  // [B, N, 3] float32
                                         const at::Tensor& p_init,   // [B, N, 2] float32 (u, v)
                                         int64_t max_iter, double lambda_init, double cost_thresh,
                                         double step_tol) {
  const auto dims = mslam::matching::check_iproj(rays, targets, p_init, c10::DeviceType::CUDA);
  const int64_t B = dims.B, H = dims.H, W = dims.W, N = dims.N;
  const c10::cuda::CUDAGuard guard(rays.device());
  at::Tensor p = at::empty({B, N, 2}, p_init.options());                        // [B, N, 2]
  at::Tensor converged = at::empty({B, N}, p_init.options().dtype(at::kBool));  // [B, N]
  if (B * N == 0) return {p, converged};
  const IprojParams prm{static_cast<int>(max_iter), static_cast<float>(lambda_init),
                        static_cast<float>(cost_thresh), static_cast<float>(step_tol)};
  iproj_kernel<<<num_blocks(B * N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      rays.data_ptr<float>(), targets.data_ptr<float>(), p_init.data_ptr<float>(), p.data_ptr<float>(),
      converged.data_ptr<bool>(), B, N, static_cast<int>(H), static_cast<int>(W), prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {p, converged};
}

std::tuple<at::Tensor, at::Tensor> project_match(const at::Tensor& X_i,    // [B, H, W, 3] float32
                                                 const at::Tensor& pts,    // [B, N, 3] float32
                                                 const at::Tensor& K,      // [B, 3, 3] float32
                                                 const at::Tensor& K_inv,  // [B, 3, 3] float32
                                                 double cost_thresh, double dist_thresh) {
  const auto dims = mslam::matching::check_project(X_i, pts, K, K_inv, c10::DeviceType::CUDA);
  const int64_t B = dims.B, H = dims.H, W = dims.W, N = dims.N;
  const c10::cuda::CUDAGuard guard(X_i.device());
  at::Tensor p = at::empty({B, N, 2}, pts.options().dtype(at::kLong));   // [B, N, 2]
  at::Tensor valid = at::empty({B, N}, pts.options().dtype(at::kBool));  // [B, N]
  if (B * N == 0) return {p, valid};
  const ProjectParams prm{static_cast<float>(cost_thresh), static_cast<float>(dist_thresh)};
  project_kernel<<<num_blocks(B * N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      X_i.data_ptr<float>(), pts.data_ptr<float>(), K.data_ptr<float>(), K_inv.data_ptr<float>(),
      p.data_ptr<int64_t>(), valid.data_ptr<bool>(), B, N, static_cast<int>(H), static_cast<int>(W), prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {p, valid};
}

at::Tensor refine_matches(const at::Tensor& D_i,  // [B, H, W, F] float32 or float16
                          const at::Tensor& D_j,  // [B, N, F] same dtype
                          const at::Tensor& p,    // [B, N, 2] int64 (u, v)
                          int64_t radius, int64_t dilation_max,
                          const c10::optional<at::Tensor>& mask) {  // [B, N] bool: refine these; others kept
  const auto dims = mslam::matching::check_refine(D_i, D_j, p, radius, dilation_max, c10::DeviceType::CUDA);
  mslam::matching::check_refine_mask(mask, dims, c10::DeviceType::CUDA);
  const int64_t B = dims.B, H = dims.H, W = dims.W, F = dims.F, N = dims.N;
  const c10::cuda::CUDAGuard guard(D_i.device());
  at::Tensor out = at::empty_like(p);  // [B, N, 2]
  if (B * N == 0) return out;
  const RefineParams prm{static_cast<int>(radius), static_cast<int>(dilation_max)};
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(D_i.scalar_type(), "refine_matches", [&] {
    refine_kernel<scalar_t><<<num_blocks(B * N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        D_i.data_ptr<scalar_t>(), D_j.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
        mask.has_value() ? mask->data_ptr<bool>() : nullptr, B, N,
        static_cast<int>(H), static_cast<int>(W), static_cast<int>(F), prm);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mslam_ns matching kernels (CUDA)";
  m.def("iproj", &iproj, "Iterative projective matching (LM per query ray)", py::arg("rays_img"),
        py::arg("targets"), py::arg("p_init"), py::arg("max_iter"), py::arg("lambda_init"),
        py::arg("cost_thresh"), py::arg("step_tol"));
  m.def("project_match", &project_match, "Matching on known pinhole rays: projection and occlusion test",
        py::arg("X_i"), py::arg("pts"), py::arg("K"), py::arg("K_inv"), py::arg("cost_thresh"),
        py::arg("dist_thresh"));
  m.def("refine_matches", &refine_matches, "Multi-dilation descriptor refinement", py::arg("D_i"),
        py::arg("D_j"), py::arg("p"), py::arg("radius"), py::arg("dilation_max"), py::arg("mask") = py::none());
}
