// CPU build of the Gauss-Newton kernels: at::parallel_for over (edge, pixel chunk) tasks. Each pixel runs the
// shared per-element body (gn.h `weigh_pixel`, also used by the CUDA loop); accepted pixels are packed into a
// small structure-of-arrays block whose 7x7 / 7 sums are then SIMD dot products over the block (only the
// structurally non-zero Jacobian entries, `row_mask`), flushed into a per-task double accumulator. Tasks are
// reduced per edge in a fixed order (deterministic).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "gn.h"

namespace {

using mslam::gn::kAcc;
using mslam::gn::kAccCost;
using mslam::gn::kAccCount;
using mslam::gn::kAccG;
using mslam::gn::kAccH;
using mslam::gn::kJ;

constexpr int64_t kChunk = 4096;  // pixels per task
constexpr int kBlock = 64;        // accepted pixels per SIMD block

// Accepted pixels of one block: robust weights, residuals and local Jacobians, pixel index last (SIMD lanes).
template <int MODE, typename T>
struct Block {
  static constexpr int R = mslam::gn::Rows<MODE>::value;
  alignas(64) T J[R][kJ][kBlock];
  alignas(64) T w[R][kBlock];
  alignas(64) T r[R][kBlock];
  T cost = T(0);
  int L = 0;

  void push(const T* rr, T (*JJ)[kJ], const T* ww) {
    for (int k = 0; k < R; ++k) {
      w[k][L] = ww[k];
      r[k][L] = rr[k];
      for (int a = 0; a < kJ; ++a) J[k][a][L] = JJ[k][a];
    }
    ++L;
  }

  // acc += sum over the block of J^T W J (packed upper triangle), J^T W r, cost and count; then empty it.
  void flush(double* acc) {
    for (int k = 0; k < R; ++k) {
      const unsigned mask = mslam::gn::row_mask<MODE>(k);
      int id = 0;
      for (int a = 0; a < kJ; ++a) {
        const bool on_a = (mask >> a) & 1u;
        if (on_a) {
          T s = T(0);
          _Pragma("omp simd reduction(+:s)")
          for (int l = 0; l < L; ++l) s += w[k][l] * r[k][l] * J[k][a][l];
          acc[kAccG + a] += double(s);
        }
        for (int b = a; b < kJ; ++b, ++id) {
          if (!on_a || !((mask >> b) & 1u)) continue;
          T s = T(0);
          _Pragma("omp simd reduction(+:s)")
          for (int l = 0; l < L; ++l) s += w[k][l] * J[k][a][l] * J[k][b][l];
          acc[kAccH + id] += double(s);
        }
      }
    }
    acc[kAccCost] += double(cost);
    acc[kAccCount] += double(L);
    cost = T(0);
    L = 0;
  }
};

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
  at::parallel_for(0, E * n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t e = task / n_chunks;
      const int64_t c = task - e * n_chunks;
      double acc[kAcc];
      for (int k = 0; k < kAcc; ++k) acc[k] = 0.0;
      const T* Xi = X + ii[e] * HW * 3;
      const T* Xj = X + jj[e] * HW * 3;
      const T* Ci = C + ii[e] * HW;
      const T* Cj = C + jj[e] * HW;
      const int64_t* idx_e = idx + e * HW;
      const bool* valid_e = valid + e * HW;
      const T* Q_e = Q + e * HW;
      const T* Tij_e = Tij + e * 8;
      const int64_t n1 = std::min(HW, (c + 1) * kChunk);
      Block<MODE, T> blk;
      for (int64_t n = c * kChunk; n < n1; ++n) {
        if (!valid_e[n]) continue;
        const int64_t m = idx_e[n];
        if (m < 0 || m >= HW) continue;
        T r[4], J[4][kJ], w[4];
        if (mslam::gn::weigh_pixel<MODE, T>(Tij_e, Xj + 3 * n, Xi + 3 * m, m, Q_e[n], Cj[n], Ci[m], p, r, J, w,
                                            blk.cost) == 0)
          continue;
        blk.push(r, J, w);
        if (blk.L == kBlock) blk.flush(acc);
      }
      blk.flush(acc);
      double* out = partial + task * kAcc;
      for (int k = 0; k < kAcc; ++k) out[k] = acc[k];
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// Returns [H [E,14,14], g [E,14], cost [E], count [E]] (count = number of residual-contributing pixels).
std::vector<at::Tensor> edge_normal_equations(int64_t mode, at::Tensor Twc, at::Tensor X, at::Tensor C,
                                              at::Tensor ii, at::Tensor jj, at::Tensor idx, at::Tensor valid,
                                              at::Tensor Q, std::vector<double> params, int64_t H, int64_t W) {
  for (auto* t : {&Twc, &X, &C, &ii, &jj, &idx, &valid, &Q}) check_cpu(*t, "input");
  TORCH_CHECK(params.size() == mslam::gn::kNumParams, "expected ", mslam::gn::kNumParams, " parameters");
  TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (rays), 1 (calib) or 2 (points)");
  const int64_t E = ii.size(0);
  const int64_t HW = X.size(1);
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
  check_cpu(Twc, "Twc");
  check_cpu(dx, "dx");
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
