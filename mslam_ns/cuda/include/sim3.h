// Sim(3) group operations on plain arrays, for host (C++) and device (CUDA) code.
//
// Same conventions and formulas as mslam_ns/geometry/sim3.py (its Python twin):
//   element  g[8]  = (tx, ty, tz, qx, qy, qz, qw, s), acting as x -> s R x + t;
//   tangent  xi[7] = (tau[3], phi[3], sigma), s = exp(sigma); left perturbation g <- Exp(xi) g;
//   Adj(g) = [[s R, [t]x R, -t], [0, R, 0], [0, 0, 1]] so that Exp(Adj(g) xi) g = g Exp(xi).
// Symmetric 7x7 matrices are stored as their packed upper triangle (row-major, 28 entries): sym7(a, b).
#pragma once

#include <cstdint>

#include "common.h"

#if defined(__CUDACC__)
#define MSLAM_UNROLL _Pragma("unroll")
#else
#define MSLAM_UNROLL _Pragma("GCC unroll 8")
#endif

namespace mslam {
namespace sim3 {

// ----------------------------------------------------------------------------------- scalar math shims
// Device code calls the CUDA math overloads, host code the <cmath> ones (float and double both).
#if defined(__CUDA_ARCH__)
template <typename T> MSLAM_HD T m_sqrt(T x) { return ::sqrt(x); }
template <typename T> MSLAM_HD T m_exp(T x) { return ::exp(x); }
template <typename T> MSLAM_HD T m_expm1(T x) { return ::expm1(x); }
template <typename T> MSLAM_HD T m_log(T x) { return ::log(x); }
template <typename T> MSLAM_HD T m_sin(T x) { return ::sin(x); }
template <typename T> MSLAM_HD T m_cos(T x) { return ::cos(x); }
template <typename T> MSLAM_HD T m_abs(T x) { return ::fabs(x); }
#else
template <typename T> MSLAM_HD T m_sqrt(T x) { return std::sqrt(x); }
#if defined(_OPENMP) && !defined(__CUDACC__)
// Declared SIMD (not inlined): without -fno-math-errno an inlined sqrt keeps a branch to the libm call that
// stops loops over pixels from vectorising; calls to these get vector clones instead. Same results.
#pragma omp declare simd notinbranch
__attribute__((noinline)) inline float m_sqrt(float x) { return std::sqrt(x); }
#pragma omp declare simd notinbranch
__attribute__((noinline)) inline double m_sqrt(double x) { return std::sqrt(x); }
#endif
template <typename T> MSLAM_HD T m_exp(T x) { return std::exp(x); }
template <typename T> MSLAM_HD T m_expm1(T x) { return std::expm1(x); }
template <typename T> MSLAM_HD T m_log(T x) { return std::log(x); }
template <typename T> MSLAM_HD T m_sin(T x) { return std::sin(x); }
template <typename T> MSLAM_HD T m_cos(T x) { return std::cos(x); }
template <typename T> MSLAM_HD T m_abs(T x) { return std::fabs(x); }

// Host float log without a libm call, so that loops over pixels vectorise (preferred over the template for
// float arguments). x = 2^e f with f in [sqrt(1/2), sqrt(2)); log f = 2 atanh(s), s = (f - 1) / (f + 1),
// odd series to s^11 (|s| < 0.172, truncation < 1e-9). Within a few ulp of logf for positive normal x (the
// only values the kernels pass: depths gated by z_eps).
inline float m_log(float x) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, x);
  const uint32_t mant = bits & 0x007fffffu;
  const int hi = mant > 0x003504f3u ? 1 : 0;  // mantissa > sqrt(2): use f / 2 and exponent + 1
  const int ex = int((bits >> 23) & 0xffu) - 127 + hi;
  const float f = __builtin_bit_cast(float, mant | (hi ? 0x3f000000u : 0x3f800000u));  // [sqrt(1/2), sqrt(2)]
  const float s = (f - 1.0f) / (f + 1.0f);
  const float s2 = s * s;
  const float poly = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (1.0f / 11)))));
  const float fe = float(ex);
  // ln 2 split into a high part exact in float times small integers, plus the remainder.
  return fe * 0.693145752f + (2.0f * s * poly + fe * 1.42860682e-6f);
}
#endif

// Index of (a, b), a <= b, in a packed upper-triangular 7x7 matrix.
MSLAM_HD int sym7(int a, int b) { return a * 7 - (a * (a - 1)) / 2 + (b - a); }
constexpr int kSym7 = 28;

// ------------------------------------------------------------------------------------------- quaternions
// out = a * b (Hamilton product, xyzw). out may not alias a or b.
template <typename T>
MSLAM_HD void quat_mul(const T* a, const T* b, T* out) {
  out[0] = a[3] * b[0] + b[3] * a[0] + a[1] * b[2] - a[2] * b[1];
  out[1] = a[3] * b[1] + b[3] * a[1] + a[2] * b[0] - a[0] * b[2];
  out[2] = a[3] * b[2] + b[3] * a[2] + a[0] * b[1] - a[1] * b[0];
  out[3] = a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2];
}

// out = R(q) x, via x + w uv + qv x uv with uv = 2 qv x x. out may alias x.
template <typename T>
MSLAM_HD void quat_rotate(const T* q, const T* x, T* out) {
  const T uv0 = T(2) * (q[1] * x[2] - q[2] * x[1]);
  const T uv1 = T(2) * (q[2] * x[0] - q[0] * x[2]);
  const T uv2 = T(2) * (q[0] * x[1] - q[1] * x[0]);
  const T o0 = x[0] + q[3] * uv0 + (q[1] * uv2 - q[2] * uv1);
  const T o1 = x[1] + q[3] * uv1 + (q[2] * uv0 - q[0] * uv2);
  const T o2 = x[2] + q[3] * uv2 + (q[0] * uv1 - q[1] * uv0);
  out[0] = o0;
  out[1] = o1;
  out[2] = o2;
}

// Rotation matrix (row-major 3x3) of a unit quaternion.
template <typename T>
MSLAM_HD void quat_to_rotmat(const T* q, T* R) {
  const T x = q[0], y = q[1], z = q[2], w = q[3];
  R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z);     R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z);     R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y);     R[7] = 2 * (y * z + w * x);     R[8] = 1 - 2 * (x * x + y * y);
}

// ----------------------------------------------------------------------------------------- group ops
// out = s R x + t. out may alias x.
template <typename T>
MSLAM_HD void act(const T* g, const T* x, T* out) {
  T y[3];
  quat_rotate(g + 3, x, y);
  out[0] = g[7] * y[0] + g[0];
  out[1] = g[7] * y[1] + g[1];
  out[2] = g[7] * y[2] + g[2];
}

// out = a * b (apply b first). out may not alias a or b.
template <typename T>
MSLAM_HD void compose(const T* a, const T* b, T* out) {
  T y[3];
  quat_rotate(a + 3, b, y);
  out[0] = a[7] * y[0] + a[0];
  out[1] = a[7] * y[1] + a[1];
  out[2] = a[7] * y[2] + a[2];
  quat_mul(a + 3, b + 3, out + 3);
  out[7] = a[7] * b[7];
}

// out = g^-1: s' = 1/s, q' = conj(q), t' = -(1/s) R^T t. out may not alias g.
template <typename T>
MSLAM_HD void inverse(const T* g, T* out) {
  out[3] = -g[3];
  out[4] = -g[4];
  out[5] = -g[5];
  out[6] = g[6];
  out[7] = T(1) / g[7];
  T y[3];
  quat_rotate(out + 3, g, y);
  out[0] = -out[7] * y[0];
  out[1] = -out[7] * y[1];
  out[2] = -out[7] * y[2];
}

// Coefficients of the Sim(3) V-matrix W = c0 I + B [phi]x + C [phi]x^2 (t = W tau in Exp), theta^2 = |phi|^2:
//   c0 = int_0^1 e^{s u} du, B = int e^{s u} sin(theta u)/theta du, C = int e^{s u} (1 - cos(theta u))/theta^2 du.
// Same branches as geometry/sim3.py `_w_coeffs`: power series for |sigma| < 1, theta-series for theta < 0.1.
template <typename T>
MSLAM_HD void w_coeffs(T sigma, T th2, T& c0, T& B, T& C) {
  constexpr int kN = 9;  // I_0 .. I_8
  T I[kN];
  if (m_abs(sigma) < T(1)) {
    // I_n = sum_k sigma^k / (k! (n + k + 1))
    for (int n = 0; n < kN; ++n) I[n] = T(0);
    T pk = T(1);
    for (int k = 0; k < 20; ++k) {
      for (int n = 0; n < kN; ++n) I[n] += pk / T(n + k + 1);
      pk = pk * sigma / T(k + 1);
    }
  } else {
    const T e = m_exp(sigma);
    I[0] = m_expm1(sigma) / sigma;
    for (int n = 1; n < kN; ++n) I[n] = (e - T(n) * I[n - 1]) / sigma;
  }
  c0 = I[0];
  if (th2 < T(0.01)) {
    // B = sum_m (-1)^m th^2m/(2m+1)! I_{2m+1}, C = sum_m (-1)^m th^2m/(2m+2)! I_{2m+2}, m = 0..3
    const T f[9] = {T(1), T(1), T(1) / T(2), T(1) / T(6), T(1) / T(24), T(1) / T(120), T(1) / T(720),
                    T(1) / T(5040), T(1) / T(40320)};
    T p = T(1);
    B = T(0);
    C = T(0);
    for (int m = 0; m < 4; ++m) {
      const T sg = (m % 2) ? T(-1) : T(1);
      B += sg * p * f[2 * m + 1] * I[2 * m + 1];
      C += sg * p * f[2 * m + 2] * I[2 * m + 2];
      p *= th2;
    }
  } else {
    const T th = m_sqrt(th2);
    const T es = m_exp(sigma);
    const T sh = m_sin(T(0.5) * th);
    const T re_e = m_expm1(sigma) - T(2) * es * sh * sh;  // e^s cos(th) - 1
    const T im_e = es * m_sin(th);
    const T r2 = sigma * sigma + th2;
    const T re_g = (re_e * sigma + im_e * th) / r2;
    const T im_g = (im_e * sigma - re_e * th) / r2;
    B = im_g / th;
    C = (c0 - re_g) / th2;
  }
}

// out = Exp(xi).
template <typename T>
MSLAM_HD void exp_map(const T* xi, T* out) {
  const T* tau = xi;
  const T* phi = xi + 3;
  const T sigma = xi[6];
  const T th2 = phi[0] * phi[0] + phi[1] * phi[1] + phi[2] * phi[2];
  // Rotation: q = (sin(th/2)/th phi, cos(th/2)).
  T k, w;
  if (th2 < T(1e-4)) {
    k = T(0.5) - th2 / T(48) + th2 * th2 / T(3840) - th2 * th2 * th2 / T(645120);
    w = T(1) - th2 / T(8) + th2 * th2 / T(384) - th2 * th2 * th2 / T(46080);
  } else {
    const T th = m_sqrt(th2);
    k = m_sin(T(0.5) * th) / th;
    w = m_cos(T(0.5) * th);
  }
  out[3] = k * phi[0];
  out[4] = k * phi[1];
  out[5] = k * phi[2];
  out[6] = w;
  out[7] = m_exp(sigma);
  // Translation: t = W tau = c0 tau + B phi x tau + C phi x (phi x tau).
  T c0, B, C;
  w_coeffs(sigma, th2, c0, B, C);
  const T a0 = phi[1] * tau[2] - phi[2] * tau[1];
  const T a1 = phi[2] * tau[0] - phi[0] * tau[2];
  const T a2 = phi[0] * tau[1] - phi[1] * tau[0];
  const T b0 = phi[1] * a2 - phi[2] * a1;
  const T b1 = phi[2] * a0 - phi[0] * a2;
  const T b2 = phi[0] * a1 - phi[1] * a0;
  out[0] = c0 * tau[0] + B * a0 + C * b0;
  out[1] = c0 * tau[1] + B * a1 + C * b1;
  out[2] = c0 * tau[2] + B * a2 + C * b2;
}

// out = Exp(xi) * g (the left retraction). out may alias g.
template <typename T>
MSLAM_HD void retract(const T* g, const T* xi, T* out) {
  T e[8], r[8];
  exp_map(xi, e);
  compose(e, g, r);
  // Re-normalise the quaternion so that repeated updates do not drift.
  const T n = m_sqrt(r[3] * r[3] + r[4] * r[4] + r[5] * r[5] + r[6] * r[6]);
  for (int k = 0; k < 8; ++k) out[k] = r[k];
  for (int k = 3; k < 7; ++k) out[k] = r[k] / n;
}

// Adjoint matrix Adj(g), row-major 7x7.
template <typename T>
MSLAM_HD void adjoint_matrix(const T* g, T* A) {
  T R[9];
  quat_to_rotmat(g + 3, R);
  const T s = g[7], tx = g[0], ty = g[1], tz = g[2];
  for (int k = 0; k < 49; ++k) A[k] = T(0);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      A[r * 7 + c] = s * R[r * 3 + c];
      A[(r + 3) * 7 + c + 3] = R[r * 3 + c];
    }
  }
  // [t]x R
  for (int c = 0; c < 3; ++c) {
    const T r0 = R[c], r1 = R[3 + c], r2 = R[6 + c];
    A[0 * 7 + 3 + c] = ty * r2 - tz * r1;
    A[1 * 7 + 3 + c] = tz * r0 - tx * r2;
    A[2 * 7 + 3 + c] = tx * r1 - ty * r0;
  }
  A[0 * 7 + 6] = -tx;
  A[1 * 7 + 6] = -ty;
  A[2 * 7 + 6] = -tz;
  A[6 * 7 + 6] = T(1);
}

// y = Adj(g) x (7-vectors); y may not alias x.
template <typename T>
MSLAM_HD void adj_apply(const T* g, const T* x, T* y) {
  T Rt[3], Rp[3];
  quat_rotate(g + 3, x, Rt);
  quat_rotate(g + 3, x + 3, Rp);
  const T* t = g;
  // tau' = s R tau + t x (R phi) - sigma t ; phi' = R phi ; sigma' = sigma
  y[0] = g[7] * Rt[0] + (t[1] * Rp[2] - t[2] * Rp[1]) - x[6] * t[0];
  y[1] = g[7] * Rt[1] + (t[2] * Rp[0] - t[0] * Rp[2]) - x[6] * t[1];
  y[2] = g[7] * Rt[2] + (t[0] * Rp[1] - t[1] * Rp[0]) - x[6] * t[2];
  y[3] = Rp[0];
  y[4] = Rp[1];
  y[5] = Rp[2];
  y[6] = x[6];
}

// y = Adj(g)^-1 x = Adj(g^-1) x; y may not alias x.
template <typename T>
MSLAM_HD void adj_inv_apply(const T* g, const T* x, T* y) {
  T gi[8];
  inverse(g, gi);
  adj_apply(gi, x, y);
}

// ------------------------------------------------------------------------------- symmetric accumulation
// Hup += w J J^T (J a 7-vector, e.g. one Jacobian row), packed upper triangle.
template <typename A, typename T>
MSLAM_HD void sym7_rank1(A* Hup, const T* J, A w) {
  int k = 0;
MSLAM_UNROLL
  for (int a = 0; a < 7; ++a) {
    const A wa = w * A(J[a]);
MSLAM_UNROLL
    for (int b = a; b < 7; ++b) Hup[k++] += wa * A(J[b]);
  }
}

// Full 7x7 (row-major) from a packed upper triangle.
template <typename A>
MSLAM_HD void sym7_unpack(const A* Hup, A* M) {
  for (int a = 0; a < 7; ++a)
    for (int b = a; b < 7; ++b) M[a * 7 + b] = M[b * 7 + a] = Hup[sym7(a, b)];
}

// Binary-edge normal equations from a 7x7 block in the LOCAL frame of the residual (frame i):
//   H_loc = sum J_loc^T W J_loc, g_loc = sum J_loc^T W r,
// with pose Jacobians J_j = J_loc Adj(T_WCi)^-1 and J_i = -J_j (left perturbations of T_WCi and T_WCj).
// Writes the 14x14 block in order [i, j] (row-major) and the 14-vector gradient.
template <typename A, typename T>
MSLAM_HD void expand_edge(const A* Hloc_up, const A* gloc, const T* Twci, T* H14, T* g14) {
  A gw[8], gi[8], Ad[49], Hl[49], tmp[49];
  for (int k = 0; k < 8; ++k) gw[k] = A(Twci[k]);
  inverse(gw, gi);
  adjoint_matrix(gi, Ad);  // Adj(T_WCi)^-1
  sym7_unpack(Hloc_up, Hl);
  // tmp = Hl Ad ; M = Ad^T tmp
  for (int r = 0; r < 7; ++r)
    for (int c = 0; c < 7; ++c) {
      A v = A(0);
      for (int k = 0; k < 7; ++k) v += Hl[r * 7 + k] * Ad[k * 7 + c];
      tmp[r * 7 + c] = v;
    }
  for (int r = 0; r < 7; ++r) {
    for (int c = 0; c < 7; ++c) {
      A v = A(0);
      for (int k = 0; k < 7; ++k) v += Ad[k * 7 + r] * tmp[k * 7 + c];
      const T m = T(v);
      H14[r * 14 + c] = m;
      H14[(r + 7) * 14 + c + 7] = m;
      H14[r * 14 + c + 7] = -m;
      H14[(r + 7) * 14 + c] = -m;
    }
    A v = A(0);
    for (int k = 0; k < 7; ++k) v += Ad[k * 7 + r] * gloc[k];
    g14[r] = T(-v);
    g14[r + 7] = T(v);
  }
}

}  // namespace sim3
}  // namespace mslam
