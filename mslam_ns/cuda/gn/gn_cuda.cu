// CUDA build of the Gauss-Newton kernels: a grid-stride loop over the pixels of each edge (blockIdx.y = edge)
// around the same per-pixel body as the CPU build (gn.h), a block reduction of the 37 accumulators and one
// double atomicAdd per block and value; a second kernel expands each edge's 7x7 block to 14x14.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "gn.h"
#include "gn_checks.h"

namespace {

using mslam::gn::kAcc;
using mslam::gn::kAccCost;
using mslam::gn::kAccCount;
using mslam::gn::kAccG;
using mslam::gn::kAccH;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <int MODE, typename T>
__global__ void accumulate_kernel(const T* __restrict__ Twc,    // [N, 8]
                                  const T* __restrict__ X,      // [N, HW, 3]
                                  const T* __restrict__ C,      // [N, HW]
                                  const int64_t* __restrict__ ii,   // [E]
                                  const int64_t* __restrict__ jj,   // [E]
                                  const int64_t* __restrict__ idx,  // [E, HW]
                                  const bool* __restrict__ valid,   // [E, HW]
                                  const T* __restrict__ Q,          // [E, HW]
                                  int64_t HW, mslam::gn::Params<T> p,
                                  double* __restrict__ acc_out) {   // [E, kAcc]
  using A = T;  // per-thread accumulation in the input precision; block totals are summed in double
  const int64_t e = blockIdx.y;
  const int64_t i = ii[e], j = jj[e];
  __shared__ T Tij[8];
  __shared__ A red[kWarps][kAcc];
  if (threadIdx.x == 0) {
    double gi[8], gj[8], inv_i[8], rel[8];
    for (int k = 0; k < 8; ++k) {
      gi[k] = double(Twc[i * 8 + k]);
      gj[k] = double(Twc[j * 8 + k]);
    }
    mslam::sim3::inverse(gi, inv_i);
    mslam::sim3::compose(inv_i, gj, rel);
    for (int k = 0; k < 8; ++k) Tij[k] = T(rel[k]);
  }
  __syncthreads();
  A acc[kAcc];
#pragma unroll
  for (int k = 0; k < kAcc; ++k) acc[k] = A(0);
  const T* Xi = X + i * HW * 3;
  const T* Xj = X + j * HW * 3;
  const T* Ci = C + i * HW;
  const T* Cj = C + j * HW;
  const int64_t* idx_e = idx + e * HW;
  const bool* valid_e = valid + e * HW;
  const T* Q_e = Q + e * HW;
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < HW; n += int64_t(gridDim.x) * blockDim.x) {
    if (!valid_e[n]) continue;
    const int64_t m = idx_e[n];
    if (m < 0 || m >= HW) continue;
    mslam::gn::accumulate_pixel<MODE, T, A>(Tij, Xj + 3 * n, Xi + 3 * m, m, Q_e[n], Cj[n], Ci[m], p, acc);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < kAcc; ++k) {
    const A v = warp_sum(acc[k]);
    if (lane == 0) red[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < kAcc) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) s += double(red[w][threadIdx.x]);
    atomicAdd(acc_out + e * kAcc + threadIdx.x, s);
  }
}

template <typename T>
__global__ void expand_kernel(const double* __restrict__ acc,  // [E, kAcc]
                              const T* __restrict__ Twc,       // [N, 8]
                              const int64_t* __restrict__ ii,  // [E]
                              int64_t E, T* __restrict__ H,    // [E, 14, 14]
                              T* __restrict__ g,               // [E, 14]
                              T* __restrict__ cost,            // [E]
                              int64_t* __restrict__ count) {   // [E]
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= E) return;
  const double* a = acc + e * kAcc;
  mslam::sim3::expand_edge<double, T>(a + kAccH, a + kAccG, Twc + ii[e] * 8, H + e * 196, g + e * 14);
  cost[e] = T(a[kAccCost]);
  count[e] = int64_t(a[kAccCount] + 0.5);
}

template <typename T>
__global__ void retract_kernel(T* __restrict__ Twc, const T* __restrict__ dx, int64_t N, int64_t n_fixed,
                               int64_t offset) {
  const int64_t i = n_fixed + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  double g[8], xi[7];
  for (int k = 0; k < 8; ++k) g[k] = double(Twc[i * 8 + k]);
  for (int k = 0; k < 7; ++k) xi[k] = double(dx[(i - offset) * 7 + k]);
  mslam::sim3::retract(g, xi, g);
  for (int k = 0; k < 8; ++k) Twc[i * 8 + k] = T(g[k]);
}

}  // namespace

// Returns [H [E,14,14], g [E,14], cost [E], count [E]].
std::vector<at::Tensor> edge_normal_equations(int64_t mode, at::Tensor Twc, at::Tensor X, at::Tensor C,
                                              at::Tensor ii, at::Tensor jj, at::Tensor idx, at::Tensor valid,
                                              at::Tensor Q, std::vector<double> params, int64_t H, int64_t W) {
  const auto dims =
      mslam::gn::check_edge_normal_equations(mode, Twc, X, C, ii, jj, idx, valid, Q, params, c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(X.device());
  const int64_t E = dims.E;
  const int64_t HW = dims.HW;
  auto opts = X.options();
  at::Tensor Hout = at::empty({E, 14, 14}, opts);
  at::Tensor gout = at::empty({E, 14}, opts);
  at::Tensor cost = at::empty({E}, opts);
  at::Tensor count = at::empty({E}, opts.dtype(at::kLong));
  if (E == 0) return {Hout, gout, cost, count};
  TORCH_CHECK(E <= 65535, "at most 65535 edges per call");  // launch limit of this build (grid y = edge)
  at::Tensor acc = at::zeros({E, kAcc}, opts.dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t per_thread = 4;
  const int64_t bx = std::max<int64_t>(1, std::min<int64_t>(1024, (HW + kThreads * per_thread - 1) /
                                                                      (kThreads * per_thread)));
  const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(E));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "edge_normal_equations_cuda", [&] {
    using T = scalar_t;
    const auto p = mslam::gn::make_params<T>(params.data(), int(H), int(W));
    const T* Twc_p = Twc.data_ptr<T>();
    const T* X_p = X.data_ptr<T>();
    const T* C_p = C.data_ptr<T>();
    const int64_t* ii_p = ii.data_ptr<int64_t>();
    const int64_t* jj_p = jj.data_ptr<int64_t>();
    const int64_t* idx_p = idx.data_ptr<int64_t>();
    const bool* valid_p = valid.data_ptr<bool>();
    const T* Q_p = Q.data_ptr<T>();
    double* acc_p = acc.data_ptr<double>();
    if (mode == mslam::gn::kRays)
      accumulate_kernel<mslam::gn::kRays, T><<<grid, kThreads, 0, stream>>>(Twc_p, X_p, C_p, ii_p, jj_p, idx_p,
                                                                           valid_p, Q_p, HW, p, acc_p);
    else if (mode == mslam::gn::kCalib)
      accumulate_kernel<mslam::gn::kCalib, T><<<grid, kThreads, 0, stream>>>(Twc_p, X_p, C_p, ii_p, jj_p, idx_p,
                                                                            valid_p, Q_p, HW, p, acc_p);
    else
      accumulate_kernel<mslam::gn::kPoints, T><<<grid, kThreads, 0, stream>>>(Twc_p, X_p, C_p, ii_p, jj_p, idx_p,
                                                                             valid_p, Q_p, HW, p, acc_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int threads = 64;
    expand_kernel<T><<<unsigned((E + threads - 1) / threads), threads, 0, stream>>>(
        acc_p, Twc_p, ii_p, E, Hout.data_ptr<T>(), gout.data_ptr<T>(), cost.data_ptr<T>(),
        count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {Hout, gout, cost, count};
}

// T <- Exp(dx) T for rows >= n_fixed. dx has N rows (rows < n_fixed ignored) or N - n_fixed rows.
at::Tensor pose_retract(at::Tensor Twc, at::Tensor dx, int64_t n_fixed) {
  mslam::gn::check_pose_retract(Twc, dx, n_fixed, c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(Twc.device());
  const int64_t N = Twc.size(0);
  const int64_t offset = dx.size(0) == N ? 0 : n_fixed;
  at::Tensor out = Twc.clone();
  if (N <= n_fixed) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int threads = 128;
  const unsigned blocks = unsigned((N - n_fixed + threads - 1) / threads);
  AT_DISPATCH_FLOATING_TYPES(Twc.scalar_type(), "pose_retract_cuda", [&] {
    retract_kernel<scalar_t><<<blocks, threads, 0, stream>>>(out.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), N,
                                                              n_fixed, offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("edge_normal_equations", &edge_normal_equations, "Per-edge 14x14 normal equations (CUDA)");
  m.def("pose_retract", &pose_retract, "T <- Exp(dx) T for the free poses (CUDA)");
}
