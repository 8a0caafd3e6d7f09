// Per-correspondence Gauss-Newton bodies (host + device), shared by gn_cpu.cpp and gn_cuda.cu.
// Python twin: mslam_ns/cuda/gn/_torch_impl.py (same formulas, vectorised).
//
// One correspondence: pixel n of keyframe j, matched to pixel m = idx[n] of keyframe i.
//   P = T_ij X_j[n], T_ij = T_WCi^-1 T_WCj, compared with X_i[m] (both in frame i).
// Residual r = prediction(P) - target(X_i[m], m), per mode:
//   rays   (4): P/|P| - X_i/|X_i| (sigma_ray, 3 rows), |P| - |X_i| (sigma_dist)
//   calib  (3): u(P) - u_m, v(P) - v_m (sigma_pixel), log P_z - log X_i,z (sigma_depth);
//               gated by P_z > z_eps, X_i,z > z_eps and u(P), v(P) inside the image grown by -pixel_border
//   points (3): P - X_i (sigma_point)
// Validity: valid_match & Q > Q_thresh & C_i[m] > C_thresh & C_j[n] > C_thresh (& 0 <= m < HW).
// Whitening: sqrt(w0) = sqrt(Q)/sigma per row, e = sqrt(w0) r; Huber weight h = min(1, k/|e|); W = h w0.
// Local Jacobian J_loc = dr/d eps for P <- Exp(eps) P (left perturbation in frame i); pose Jacobians are
// J_j = J_loc Adj(T_WCi)^-1 and J_i = -J_j, applied once per edge (sim3::expand_edge), so the per-pixel
// work accumulates only the 7x7 block in frame i.
// Sign convention: g = J^T W r (gradient of 0.5 * cost), H = J^T W J; the step solves (H + D) dx = -g and
// poses update as T <- Exp(dx) T.
// Cost: sum over rows of 2 rho_k(e) (Huber: e^2 if |e| <= k else 2k|e| - k^2); it equals the sum of robust-
// weighted squared whitened residuals for inliers and is the function whose gradient (x 0.5) is g.
#pragma once

#include <cstdint>

#include "common.h"
#include "sim3.h"

namespace mslam {
namespace gn {

enum Mode : int { kRays = 0, kCalib = 1, kPoints = 2 };

template <int MODE> struct Rows { static constexpr int value = 3; };
template <> struct Rows<kRays> { static constexpr int value = 4; };

// Columns of local-Jacobian row k that can be non-zero (bit b = column b), per mode.
template <int MODE>
MSLAM_HD constexpr unsigned row_mask(int k) {
  return MODE == kRays ? (k < 3 ? 0x3Fu : 0x47u)                                   // ray: t, rot; dist: t, s
         : MODE == kCalib ? (k == 0 ? 0x3Du : k == 1 ? 0x3Eu : 0x5Cu)              // u; v; log z
                          : (k == 0 ? 0x71u : k == 1 ? 0x6Au : 0x5Cu);             // points x, y, z
}

// Accumulator layout per edge: packed upper triangle of H_loc (28), g_loc (7), cost (1), valid count (1).
constexpr int kAccH = 0;
constexpr int kAccG = 28;
constexpr int kAccCost = 35;
constexpr int kAccCount = 36;
constexpr int kAcc = 37;

// Scalar parameters (one copy per call). Order matches `_params` in gn/__init__.py.
template <typename T>
struct Params {
  T sigma_ray, sigma_dist, sigma_pixel, sigma_depth, sigma_point;
  T C_thresh, Q_thresh, huber;
  T fx, fy, cx, cy;
  T z_eps, border;
  int H, W;
  T isig_ray, isig_dist, isig_pixel, isig_depth, isig_point;  // 1 / sigma (set by make_params)
  T one;                                                       // 1 (set by make_params)
};
constexpr int kNumParams = 14;
constexpr int kJ = 7;  // columns of the local Jacobian (tau, phi, sigma)

template <typename T>
MSLAM_HD Params<T> make_params(const double* v, int H, int W) {
  Params<T> p;
  p.sigma_ray = T(v[0]); p.sigma_dist = T(v[1]); p.sigma_pixel = T(v[2]); p.sigma_depth = T(v[3]);
  p.sigma_point = T(v[4]); p.C_thresh = T(v[5]); p.Q_thresh = T(v[6]); p.huber = T(v[7]);
  p.fx = T(v[8]); p.fy = T(v[9]); p.cx = T(v[10]); p.cy = T(v[11]); p.z_eps = T(v[12]); p.border = T(v[13]);
  p.H = H;
  p.W = W;
  p.isig_ray = T(1.0 / v[0]);
  p.isig_dist = T(1.0 / v[1]);
  p.isig_pixel = T(1.0 / v[2]);
  p.isig_depth = T(1.0 / v[3]);
  p.isig_point = T(1.0 / v[4]);
  p.one = T(1);
  return p;
}

// Stage 1 of one correspondence (no gates, no branches): P = T_ij X_j and the square roots used later
// (|P|, |X_i| for rays; sqrt(q) for the whitening). Split from stage 2 so that the CPU build can run the
// square roots (library calls) and the gated arithmetic in separate vectorised loops.
template <typename T>
struct Geo {
  T P[3];
  T nP, nX;  // |P|, |X_i| (rays only; 0 otherwise)
  T sq;      // sqrt(q)
};

template <int MODE, typename T>
MSLAM_HD void geometry(const T* Tij, const T* Xj, const T* Xi, T q, Geo<T>& g) {
  sim3::act(Tij, Xj, g.P);
  if (MODE == kRays) {
    g.nP = sim3::m_sqrt(g.P[0] * g.P[0] + g.P[1] * g.P[1] + g.P[2] * g.P[2]);
    g.nX = sim3::m_sqrt(Xi[0] * Xi[0] + Xi[1] * Xi[1] + Xi[2] * Xi[2]);
  } else {
    g.nP = T(0);
    g.nX = T(0);
  }
  g.sq = sim3::m_sqrt(q);
}

// Residual r, local Jacobian J (rows x 7) and 1/sigma per row; (mu, mv) = pixel coordinates of m.
// Returns false when the correspondence is gated. Branch-free (gates are masks, gated lanes compute finite
// dummy values) so that the CPU build can vectorise it across pixels.
template <int MODE, typename T>
MSLAM_HD bool residual(const Geo<T>& g, const T* Xi, T mu, T mv, const Params<T>& p, T* r, T (*J)[kJ],
                       T* isig) {
  using sim3::m_log;
  const T* P = g.P;
  if (MODE == kRays) {
    const bool ok = (g.nP > T(0)) & (g.nX > T(0));  // |P| > 0 and |X_i| > 0
    // Gated lanes divide by p.one (a run-time 1: with a literal the compiler would fold 1 / 1 and move the
    // division into a branch, which blocks vectorisation on the CPU).
    const T nP = ok ? g.nP : p.one;
    const T nX = ok ? g.nX : p.one;
    const T iP = T(1) / nP, iX = T(1) / nX;
    const T d[3] = {P[0] * iP, P[1] * iP, P[2] * iP};  // unit ray of P
    MSLAM_UNROLL
    for (int a = 0; a < 3; ++a) {
      r[a] = d[a] - Xi[a] * iX;
      // [(I - d d^T)/|P|, -[d]x, 0]
      MSLAM_UNROLL
      for (int b = 0; b < 3; ++b) J[a][b] = ((a == b ? T(1) : T(0)) - d[a] * d[b]) * iP;
      J[a][6] = T(0);
      isig[a] = p.isig_ray;
    }
    J[0][3] = T(0);  J[0][4] = d[2];  J[0][5] = -d[1];
    J[1][3] = -d[2]; J[1][4] = T(0);  J[1][5] = d[0];
    J[2][3] = d[1];  J[2][4] = -d[0]; J[2][5] = T(0);
    r[3] = nP - nX;
    J[3][0] = d[0]; J[3][1] = d[1]; J[3][2] = d[2];
    J[3][3] = T(0); J[3][4] = T(0); J[3][5] = T(0); J[3][6] = nP;
    isig[3] = p.isig_dist;
    return ok;
  } else if (MODE == kCalib) {
    const bool okz = (P[2] > p.z_eps) & (Xi[2] > p.z_eps);
    const T Pz = okz ? P[2] : p.one, Xz = okz ? Xi[2] : p.one;  // p.one: see kRays
    const T iz = T(1) / Pz;
    const T a = P[0] * iz, b = P[1] * iz;
    const T u = p.fx * a + p.cx, v = p.fy * b + p.cy;
    const bool ok = okz & (u >= p.border) & (u <= T(p.W - 1) - p.border) & (v >= p.border) &
                    (v <= T(p.H - 1) - p.border);
    r[0] = u - mu;
    r[1] = v - mv;
    r[2] = m_log(Pz) - m_log(Xz);
    J[0][0] = p.fx * iz; J[0][1] = T(0); J[0][2] = -p.fx * a * iz;
    J[0][3] = -p.fx * a * b; J[0][4] = p.fx * (T(1) + a * a); J[0][5] = -p.fx * b; J[0][6] = T(0);
    J[1][0] = T(0); J[1][1] = p.fy * iz; J[1][2] = -p.fy * b * iz;
    J[1][3] = -p.fy * (T(1) + b * b); J[1][4] = p.fy * a * b; J[1][5] = p.fy * a; J[1][6] = T(0);
    J[2][0] = T(0); J[2][1] = T(0); J[2][2] = iz;
    J[2][3] = b; J[2][4] = -a; J[2][5] = T(0); J[2][6] = T(1);
    isig[0] = isig[1] = p.isig_pixel;
    isig[2] = p.isig_depth;
    return ok;
  } else {
    // [I, -[P]x, P]
    MSLAM_UNROLL
    for (int a = 0; a < 3; ++a) {
      r[a] = P[a] - Xi[a];
      MSLAM_UNROLL
      for (int b = 0; b < 3; ++b) J[a][b] = (a == b) ? T(1) : T(0);
      J[a][6] = P[a];
      isig[a] = p.isig_point;
    }
    J[0][3] = T(0);  J[0][4] = P[2];  J[0][5] = -P[1];
    J[1][3] = -P[2]; J[1][4] = T(0);  J[1][5] = P[0];
    J[2][3] = P[1];  J[2][4] = -P[0]; J[2][5] = T(0);
    return true;
  }
}

// Stage 2 of one correspondence, branch-free: residual, gates, whitening and Huber weight. Always fills all
// R rows of r and J and the robust weights w = Huber(e) * w0 (w = 0 when gated); returns whether the pixel
// contributes and adds its sum 2 rho(e) to cost (nothing when gated).
//   g  stage 1 of (T_ij, X_j[n], X_i[m], q);  Xi [3]  X_i[m];  (mu, mv) pixel of m;  q = Q[e, n];
//   Cj = C_j[n];  Ci = C_i[m];  ok_in: valid match with m inside the image (caller's index checks).
template <int MODE, typename T>
MSLAM_HD bool weigh_pixel_masked(const Geo<T>& g, const T* Xi, T mu, T mv, T q, T Cj, T Ci, bool ok_in,
                                 const Params<T>& p, T* r, T (*J)[kJ], T* w, T& cost) {
  bool ok = ok_in & (q > p.Q_thresh) & (Ci > p.C_thresh) & (Cj > p.C_thresh);
  constexpr int R = Rows<MODE>::value;
  T isig[4];
  ok = ok & residual<MODE, T>(g, Xi, mu, mv, p, r, J, isig);
  const T sq = ok ? g.sq : T(0);
  T c = T(0);
  MSLAM_UNROLL
  for (int k = 0; k < R; ++k) {
    const T sw = sq * isig[k];  // sqrt(w0); 0 when gated
    const T e = sw * r[k];      // whitened residual
    const T ae = sim3::m_abs(e);
    // Branch-free Huber: weight k / max(|e|, k) (exactly 1 for inliers; 1 / 1 when k = |e| = 0), 2 rho(e) =
    // lo (2|e| - lo) with lo = min(|e|, k) (= e^2 for inliers, 2k|e| - k^2 for outliers).
    const bool outlier = ae > p.huber;
    const T hi = outlier ? ae : p.huber;
    const T lo = outlier ? p.huber : ae;
    const bool pos = hi > T(0);
    w[k] = ((pos ? p.huber : p.one) / (pos ? hi : p.one)) * sw * sw;  // Huber(e) * w0
    c += lo * (T(2) * ae - lo);
  }
  cost += c;
  return ok;
}

// Scalar form of weigh_pixel_masked: returns the number of residual rows (0 when gated).
template <int MODE, typename T>
MSLAM_HD int weigh_pixel(const T* Tij, const T* Xj, const T* Xi, int64_t m, T q, T Cj, T Ci, const Params<T>& p,
                         T* r, T (*J)[kJ], T* w, T& cost) {
  const int64_t mv = m / p.W;
  const int64_t mu = m - mv * p.W;
  T c = T(0);
  Geo<T> g;
  geometry<MODE, T>(Tij, Xj, Xi, q, g);
  if (!weigh_pixel_masked<MODE, T>(g, Xi, T(mu), T(mv), q, Cj, Ci, true, p, r, J, w, c)) return 0;
  cost += c;
  return Rows<MODE>::value;
}

// acc[k * STRIDE] += this pixel's terms, k over the kAcc layout: packed upper triangle of sum_k w_k J_k^T J_k
// (only the structurally non-zero entries, row_mask), sum_k w_k r_k J_k, cost and count (ok ? 1 : 0).
// Gated pixels have w = 0 and cost = 0, so they add zeros (branch-free: the CPU build vectorises over lanes).
template <int MODE, int STRIDE, typename T, typename A>
MSLAM_HD void accumulate_terms(const T* r, const T (*J)[kJ], const T* w, T cost, bool ok, A* acc) {
  MSLAM_UNROLL
  for (int k = 0; k < Rows<MODE>::value; ++k) {
    // Skip the structurally zero Jacobian entries (row_mask): after unrolling the tests are compile-time.
    const unsigned mask = row_mask<MODE>(k);
    const A wk = A(w[k]);
    const A wr = wk * A(r[k]);
    int idx = 0;
    MSLAM_UNROLL
    for (int a = 0; a < 7; ++a) {
      const bool on_a = (mask >> a) & 1u;
      if (on_a) acc[(kAccG + a) * STRIDE] += wr * A(J[k][a]);
      const A wa = wk * A(J[k][a]);
      MSLAM_UNROLL
      for (int b = a; b < 7; ++b, ++idx)
        if (on_a && ((mask >> b) & 1u)) acc[(kAccH + idx) * STRIDE] += wa * A(J[k][b]);
    }
  }
  acc[kAccCost * STRIDE] += A(cost);
  acc[kAccCount * STRIDE] += ok ? A(1) : A(0);
}

// weigh_pixel + accumulation into acc[kAcc] (packed 7x7 upper triangle; the body of the CUDA loop).
template <int MODE, typename T, typename A>
MSLAM_HD void accumulate_pixel(const T* Tij, const T* Xj, const T* Xi, int64_t m, T q, T Cj, T Ci,
                               const Params<T>& p, A* acc) {
  T r[4], J[4][kJ], w[4];
  T cost = T(0);
  if (weigh_pixel<MODE, T>(Tij, Xj, Xi, m, q, Cj, Ci, p, r, J, w, cost) == 0) return;
  accumulate_terms<MODE, 1, T, A>(r, J, w, cost, true, acc);
}

}  // namespace gn
}  // namespace mslam
