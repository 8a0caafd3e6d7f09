// CPU build of the Gauss-Newton kernels: at::parallel_for over (edge, pixel chunk) tasks. Pixels are processed
// in batches of kLanes: a scalar pass gathers each lane's inputs into structure-of-arrays buffers (index and
// validity checks become a per-lane mask, gated lanes read a safe pixel), then a SIMD pass over the lanes runs
// the shared branch-free per-element body (gn.h `weigh_pixel_masked`, also behind the CUDA loop) and adds each
// lane's terms into per-lane accumulators (`accumulate_terms`: gated lanes add zeros). The per-lane sums are
// flushed into a per-task double accumulator every kFlush batches; tasks are reduced per edge in a fixed order
// (deterministic). With AVX2 available (checked at run time) the same body runs as an AVX2 build.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "gn.h"
#include "gn_checks.h"

namespace {

using mslam::gn::kAcc;
using mslam::gn::kAccCost;
using mslam::gn::kAccCount;
using mslam::gn::kAccG;
using mslam::gn::kAccH;
using mslam::gn::kJ;

constexpr int64_t kChunk = 4096;  // pixels per task
constexpr int kLanes = 16;        // pixels per SIMD batch
constexpr int kFlush = 64;        // batches per flush of the per-lane (T) sums into the double accumulator

// Inputs of one edge.
template <typename T>
struct EdgeIn {
  const T* Xi;            // [HW, 3]
  const T* Xj;            // [HW, 3]
  const T* Ci;            // [HW]
  const T* Cj;            // [HW]
  const int64_t* idx;     // [HW]
  const bool* valid;      // [HW]
  const T* Q;             // [HW]
  T Tij[8];               // T_WCi^-1 T_WCj
};

// acc [kAcc] (double) += the pixels n0 <= n < n1 of one edge. IDENT: idx[n] == n for every pixel (not read).
template <int MODE, typename T, bool IDENT>
__attribute__((always_inline)) inline void chunk_body(const EdgeIn<T>& in, int64_t n0, int64_t n1, int64_t HW,
                                                      const mslam::gn::Params<T>& p, double* acc) {
  alignas(64) T lacc[kAcc * kLanes];  // per-lane sums, entry k of lane l at k * kLanes + l
  alignas(64) T xj[3][kLanes], xi[3][kLanes], q[kLanes], cj[kLanes], ci[kLanes], mu[kLanes], mv[kLanes];
  alignas(64) int32_t ok[kLanes], msi[kLanes];
  for (int l = 0; l < kLanes; ++l) mu[l] = mv[l] = T(0);
  alignas(64) T gP[3][kLanes], gnP[kLanes], gnX[kLanes], gsq[kLanes];  // stage 1 results
  for (int k = 0; k < kAcc * kLanes; ++k) lacc[k] = T(0);
  const T t0 = in.Tij[0], t1 = in.Tij[1], t2 = in.Tij[2], t3 = in.Tij[3], t4 = in.Tij[4], t5 = in.Tij[5],
          t6 = in.Tij[6], t7 = in.Tij[7];
  const mslam::gn::Params<T> pl = p;
  const double invW = 1.0 / double(p.W);
  const int32_t W32 = p.W;
  auto flush = [&]() {
    for (int k = 0; k < kAcc; ++k) {
      double s = 0.0;
      for (int l = 0; l < kLanes; ++l) s += double(lacc[k * kLanes + l]);
      acc[k] += s;
    }
    for (int k = 0; k < kAcc * kLanes; ++k) lacc[k] = T(0);
  };
  int nb = 0;
  for (int64_t b = n0; b < n1; b += kLanes) {
    // Gather: per-lane inputs, masks and safe indices (gated lanes read pixel 0).
    if (b + kLanes <= n1) {
      // Full batch (branch-free, vectorisable).
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        const int64_t n = b + l;
        // Integer arithmetic instead of bools (bool <-> int conversions block GCC's vectoriser).
        const uint64_t m = IDENT ? uint64_t(n) : uint64_t(in.idx[n]);
        const uint64_t vb = reinterpret_cast<const uint8_t*>(in.valid)[n];
        const uint64_t in_range = IDENT ? 1u : (((m - uint64_t(HW)) >> 63) & (~m >> 63));  // 0 <= m < HW
        const uint64_t okl = vb & in_range;
        const uint64_t ms = m & (uint64_t(0) - okl);  // m, or 0 when gated
        for (int c = 0; c < 3; ++c) {
          xj[c][l] = in.Xj[3 * n + c];
          xi[c][l] = in.Xi[3 * ms + c];
        }
        q[l] = in.Q[n];
        cj[l] = in.Cj[n];
        ci[l] = in.Ci[ms];
        ok[l] = int32_t(okl);
        msi[l] = int32_t(ms);
      }
    } else {
      for (int l = 0; l < kLanes; ++l) {
        const int64_t n = b + l;
        const bool inside = n < n1;
        const int64_t nn = inside ? n : n0;
        const int64_t m = IDENT ? nn : in.idx[nn];
        const bool okl = inside && in.valid[nn] && (IDENT || (m >= 0 && m < HW));
        const int64_t ms = (IDENT || okl) ? m : 0;
        for (int c = 0; c < 3; ++c) {
          xj[c][l] = in.Xj[3 * nn + c];
          xi[c][l] = in.Xi[3 * ms + c];
        }
        q[l] = in.Q[nn];
        cj[l] = in.Cj[nn];
        ci[l] = in.Ci[ms];
        ok[l] = okl;
        msi[l] = int32_t(ms);
      }
    }
    if (MODE == mslam::gn::kCalib) {
      // Pixel (u, v) of m: v = floor((m + 0.5) / W) in double, then an exact integer correction.
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        const int32_t ms = msi[l];
        int32_t v = int32_t((double(ms) + 0.5) * invW);
        int32_t u = ms - v * W32;
        v = v + (u >= W32 ? 1 : 0) - (u < 0 ? 1 : 0);
        u = ms - v * W32;
        mu[l] = T(u);
        mv[l] = T(v);
      }
    }
    // Stage 1 (transform and square roots; SIMD over the lanes, no branches).
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const T Xjl[3] = {xj[0][l], xj[1][l], xj[2][l]};
      const T Xil[3] = {xi[0][l], xi[1][l], xi[2][l]};
      const T Tij[8] = {t0, t1, t2, t3, t4, t5, t6, t7};
      mslam::gn::Geo<T> g;
      mslam::gn::geometry<MODE, T>(Tij, Xjl, Xil, q[l], g);
      for (int c = 0; c < 3; ++c) gP[c][l] = g.P[c];
      gnP[l] = g.nP;
      gnX[l] = g.nX;
      gsq[l] = g.sq;
    }
    // Stage 2: gates, residuals, weights and accumulation (SIMD over the lanes, selects instead of branches).
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      const T Xil[3] = {xi[0][l], xi[1][l], xi[2][l]};
      mslam::gn::Geo<T> g;
      for (int c = 0; c < 3; ++c) g.P[c] = gP[c][l];
      g.nP = gnP[l];
      g.nX = gnX[l];
      g.sq = gsq[l];
      T r[4], J[4][kJ], w[4];
      T cost = T(0);
      const bool o = mslam::gn::weigh_pixel_masked<MODE, T>(g, Xil, mu[l], mv[l], q[l], cj[l], ci[l], ok[l] != 0,
                                                            pl, r, J, w, cost);
      mslam::gn::accumulate_terms<MODE, kLanes, T, T>(r, J, w, cost, o, lacc + l);
    }
    if (++nb == kFlush) {
      flush();
      nb = 0;
    }
  }
  if (nb) flush();
}

template <int MODE, typename T, bool IDENT>
void chunk_default(const EdgeIn<T>& in, int64_t n0, int64_t n1, int64_t HW, const mslam::gn::Params<T>& p,
                   double* acc) {
  chunk_body<MODE, T, IDENT>(in, n0, n1, HW, p, acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MSLAM_GN_AVX2 1
template <int MODE, typename T, bool IDENT>
__attribute__((target("avx2"))) void chunk_avx2(const EdgeIn<T>& in, int64_t n0, int64_t n1, int64_t HW,
                                                const mslam::gn::Params<T>& p, double* acc) {
  chunk_body<MODE, T, IDENT>(in, n0, n1, HW, p, acc);
}
#endif

template <int MODE, typename T, bool IDENT>
void run_chunk(bool avx2, const EdgeIn<T>& in, int64_t n0, int64_t n1, int64_t HW, const mslam::gn::Params<T>& p,
               double* acc) {
#ifdef MSLAM_GN_AVX2
  if (avx2) return chunk_avx2<MODE, T, IDENT>(in, n0, n1, HW, p, acc);
#endif
  chunk_default<MODE, T, IDENT>(in, n0, n1, HW, p, acc);
}

// True when idx[n] == n for all n (the tracker's correspondences are often the identity).
bool is_identity(const int64_t* idx, int64_t HW) {
  for (int64_t n = 0; n < HW; ++n)
    if (idx[n] != n) return false;
  return true;
}

template <int MODE, typename T>
void accumulate_edges(const T* Tij,          // [E, 8]
                      const T* X,            // [N, HW, 3]
                      const T* C,            // [N, HW]
                      const int64_t* ii,     // [E]
                      const int64_t* jj,     // [E]
                      const int64_t* idx,    // [E, HW]
                      const bool* valid,     // [E, HW]
                      const T* Q,            // [E, HW]
                      int64_t E, int64_t HW, const mslam::gn::Params<T>& p,
                      double* partial) {     // [E, n_chunks, kAcc]
  const int64_t n_chunks = (HW + kChunk - 1) / kChunk;
#ifdef MSLAM_GN_AVX2
  const bool avx2 = __builtin_cpu_supports("avx2");
#else
  const bool avx2 = false;
#endif
  std::vector<char> ident(static_cast<size_t>(E), 0);
  at::parallel_for(0, E, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) ident[e] = is_identity(idx + e * HW, HW);
  });
  at::parallel_for(0, E * n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t e = task / n_chunks;
      const int64_t c = task - e * n_chunks;
      double acc[kAcc];
      for (int k = 0; k < kAcc; ++k) acc[k] = 0.0;
      EdgeIn<T> in;
      in.Xi = X + ii[e] * HW * 3;
      in.Xj = X + jj[e] * HW * 3;
      in.Ci = C + ii[e] * HW;
      in.Cj = C + jj[e] * HW;
      in.idx = idx + e * HW;
      in.valid = valid + e * HW;
      in.Q = Q + e * HW;
      for (int k = 0; k < 8; ++k) in.Tij[k] = Tij[e * 8 + k];
      const int64_t n0 = c * kChunk;
      const int64_t n1 = std::min(HW, (c + 1) * kChunk);
      if (ident[e])
        run_chunk<MODE, T, true>(avx2, in, n0, n1, HW, p, acc);
      else
        run_chunk<MODE, T, false>(avx2, in, n0, n1, HW, p, acc);
      double* out = partial + task * kAcc;
      for (int k = 0; k < kAcc; ++k) out[k] = acc[k];
    }
  });
}

}  // namespace

// Returns [H [E,14,14], g [E,14], cost [E], count [E]] (count = number of residual-contributing pixels).
std::vector<at::Tensor> edge_normal_equations(int64_t mode, at::Tensor Twc, at::Tensor X, at::Tensor C,
                                              at::Tensor ii, at::Tensor jj, at::Tensor idx, at::Tensor valid,
                                              at::Tensor Q, std::vector<double> params, int64_t H, int64_t W) {
  const auto dims =
      mslam::gn::check_edge_normal_equations(mode, Twc, X, C, ii, jj, idx, valid, Q, params, c10::DeviceType::CPU);
  const int64_t E = dims.E;
  const int64_t HW = dims.HW;
  auto opts = X.options();
  at::Tensor Hout = at::zeros({E, 14, 14}, opts);
  at::Tensor gout = at::zeros({E, 14}, opts);
  at::Tensor cost = at::zeros({E}, opts);
  at::Tensor count = at::zeros({E}, opts.dtype(at::kLong));
  if (E == 0) return {Hout, gout, cost, count};
  const int64_t n_chunks = (HW + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(E * n_chunks * kAcc), 0.0);

  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "edge_normal_equations_cpu", [&] {
    using T = scalar_t;
    const T* Twc_p = Twc.data_ptr<T>();
    const int64_t* ii_p = ii.data_ptr<int64_t>();
    const int64_t* jj_p = jj.data_ptr<int64_t>();
    // Relative poses T_ij = T_WCi^-1 T_WCj, composed in double.
    std::vector<T> Tij(static_cast<size_t>(E * 8));
    for (int64_t e = 0; e < E; ++e) {
      double gi[8], gj[8], inv_i[8], rel[8];
      for (int k = 0; k < 8; ++k) {
        gi[k] = double(Twc_p[ii_p[e] * 8 + k]);
        gj[k] = double(Twc_p[jj_p[e] * 8 + k]);
      }
      mslam::sim3::inverse(gi, inv_i);
      mslam::sim3::compose(inv_i, gj, rel);
      for (int k = 0; k < 8; ++k) Tij[e * 8 + k] = T(rel[k]);
    }
    const auto p = mslam::gn::make_params<T>(params.data(), int(H), int(W));
    const T* X_p = X.data_ptr<T>();
    const T* C_p = C.data_ptr<T>();
    const int64_t* idx_p = idx.data_ptr<int64_t>();
    const bool* valid_p = valid.data_ptr<bool>();
    const T* Q_p = Q.data_ptr<T>();
    if (mode == mslam::gn::kRays)
      accumulate_edges<mslam::gn::kRays, T>(Tij.data(), X_p, C_p, ii_p, jj_p, idx_p, valid_p, Q_p, E, HW, p,
                                            partial.data());
    else if (mode == mslam::gn::kCalib)
      accumulate_edges<mslam::gn::kCalib, T>(Tij.data(), X_p, C_p, ii_p, jj_p, idx_p, valid_p, Q_p, E, HW, p,
                                             partial.data());
    else
      accumulate_edges<mslam::gn::kPoints, T>(Tij.data(), X_p, C_p, ii_p, jj_p, idx_p, valid_p, Q_p, E, HW, p,
                                              partial.data());
    // Reduce the chunks of each edge in order, then expand the local 7x7 block to the 14x14 pose block.
    T* H_p = Hout.data_ptr<T>();
    T* g_p = gout.data_ptr<T>();
    T* cost_p = cost.data_ptr<T>();
    int64_t* count_p = count.data_ptr<int64_t>();
    for (int64_t e = 0; e < E; ++e) {
      double acc[kAcc];
      for (int k = 0; k < kAcc; ++k) acc[k] = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const double* src = partial.data() + (e * n_chunks + c) * kAcc;
        for (int k = 0; k < kAcc; ++k) acc[k] += src[k];
      }
      mslam::sim3::expand_edge<double, T>(acc + kAccH, acc + kAccG, Twc_p + ii_p[e] * 8, H_p + e * 196, g_p + e * 14);
      cost_p[e] = T(acc[kAccCost]);
      count_p[e] = int64_t(acc[mslam::gn::kAccCount]);
    }
  });
  return {Hout, gout, cost, count};
}

// T <- Exp(dx) T for rows >= n_fixed. dx has N rows (rows < n_fixed ignored) or N - n_fixed rows.
at::Tensor pose_retract(at::Tensor Twc, at::Tensor dx, int64_t n_fixed) {
  mslam::gn::check_pose_retract(Twc, dx, n_fixed, c10::DeviceType::CPU);
  const int64_t N = Twc.size(0);
  const int64_t offset = dx.size(0) == N ? 0 : n_fixed;
  at::Tensor out = Twc.clone();
  AT_DISPATCH_FLOATING_TYPES(Twc.scalar_type(), "pose_retract_cpu", [&] {
    const scalar_t* dx_p = dx.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = n_fixed; i < N; ++i) {
      double g[8], xi[7];
      for (int k = 0; k < 8; ++k) g[k] = double(o[i * 8 + k]);
      for (int k = 0; k < 7; ++k) xi[k] = double(dx_p[(i - offset) * 7 + k]);
      mslam::sim3::retract(g, xi, g);
      for (int k = 0; k < 8; ++k) o[i * 8 + k] = scalar_t(g[k]);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("edge_normal_equations", &edge_normal_equations, "Per-edge 14x14 normal equations (CPU)");
  m.def("pose_retract", &pose_retract, "T <- Exp(dx) T for the free poses (CPU)");
}
