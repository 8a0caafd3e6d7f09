// Per-element math of the matcher (docs/algorithm.md section 2), written once for host (C++) and device (CUDA).
//
// matching_cpu.cpp and matching_cuda.cu only loop over (batch, point) and call these bodies; the PyTorch
// twins in _torch_impl.py follow the same formulas in the same floating-point order.
//
// Layouts (all row-major, contiguous):
//   ray image   img  [H, W, 9] float32: unit ray (3), d ray / du (3), d ray / dv (3)
//   descriptors D_i  [H, W, F] (float32 or half), query q [F]
//   pixels      (u, v): u = column in [0, W), v = row in [0, H)
#pragma once

#include <cstdint>

#include "common.h"

// Loop-unrolling hint understood by both nvcc and GCC/Clang (plain `#pragma unroll` warns on GCC).
#if defined(__CUDACC__)
#define MSLAM_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define MSLAM_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define MSLAM_UNROLL _Pragma("GCC unroll 16")
#else
#define MSLAM_UNROLL
#endif

namespace mslam {
namespace matching {

// ---------------------------------------------------------------------------------------------------
// Small helpers (explicit comparisons, so NaN handling is the same on host and device).
// ---------------------------------------------------------------------------------------------------

MSLAM_HD float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

MSLAM_HD int clampi(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

MSLAM_HD bool finitef(float x) { return (x - x) == 0.0f; }  // false for NaN and +-inf

// ---------------------------------------------------------------------------------------------------
// Bilinear sampling of the 9-channel ray image at a continuous pixel (u, v).
// ---------------------------------------------------------------------------------------------------

// Bilinear interpolation weights and corner offset of a continuous pixel (u, v) in an [H, W, 9] image.
// out[c] = w00 I(v0,u0) + w01 I(v0,u0+1) + w10 I(v0+1,u0) + w11 I(v0+1,u0+1), summed left to right.
// The cell (u0, v0) = floor(u, v) is clamped to [0, W-2] x [0, H-2] (needs H, W >= 2).
struct Bilinear {
  long long offset;  // float offset of corner (v0, u0) in the image
  float w00, w01, w10, w11;
  long long row;  // floats per image row (9 W)

  MSLAM_HD Bilinear(int H, int W, float u, float v) {
    const int u0 = clampi(static_cast<int>(floorf(u)), 0, W - 2);
    const int v0 = clampi(static_cast<int>(floorf(v)), 0, H - 2);
    const float du = u - static_cast<float>(u0);
    const float dv = v - static_cast<float>(v0);
    w00 = (1.0f - du) * (1.0f - dv);
    w01 = du * (1.0f - dv);
    w10 = (1.0f - du) * dv;
    w11 = du * dv;
    row = static_cast<long long>(W) * 9;
    offset = static_cast<long long>(v0) * row + static_cast<long long>(u0) * 9;
  }

  // out[c] for channels c in [C0, C1) of img [H, W, 9]
  template <int C0, int C1>
  MSLAM_HD void sample(const float* __restrict__ img, float out[9]) const {
    const float* p00 = img + offset;
    const float* p01 = p00 + 9;
    const float* p10 = p00 + row;
    const float* p11 = p10 + 9;
    MSLAM_UNROLL
    for (int c = C0; c < C1; ++c) out[c] = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
  }
};

// All 9 channels at (u, v).
MSLAM_HD void bilinear9(const float* __restrict__ img,  // [H, W, 9]
                        int H, int W, float u, float v, float out[9]) {
  Bilinear(H, W, u, v).sample<0, 9>(img, out);
}

// Residual e = psi_hat - t with psi_hat = s[0:3] * (1 / max(|s[0:3]|, 1e-12)); returns |e|^2.
MSLAM_HD float ray_residual(const float s[9], const float t[3], float e[3]) {
  float n = sqrtf(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]);
  n = n > 1e-12f ? n : 1e-12f;
  const float inv = 1.0f / n;
  e[0] = s[0] * inv - t[0];
  e[1] = s[1] * inv - t[1];
  e[2] = s[2] * inv - t[2];
  return e[0] * e[0] + e[1] * e[1] + e[2] * e[2];
}

// One damped Gauss-Newton step: (J^T J + lambda I) delta = -J^T e with J = [g_x g_y] = [s[3:6] s[6:9]].
// Closed-form 2x2 solve. Returns false (step rejected) when the system is singular or the step not finite.
MSLAM_HD bool lm_step(const float s[9], const float e[3], float lambda, float* du, float* dv) {
  const float* gx = s + 3;
  const float* gy = s + 6;
  const float a00 = gx[0] * gx[0] + gx[1] * gx[1] + gx[2] * gx[2] + lambda;
  const float a01 = gx[0] * gy[0] + gx[1] * gy[1] + gx[2] * gy[2];
  const float a11 = gy[0] * gy[0] + gy[1] * gy[1] + gy[2] * gy[2] + lambda;
  const float b0 = -(gx[0] * e[0] + gx[1] * e[1] + gx[2] * e[2]);
  const float b1 = -(gy[0] * e[0] + gy[1] * e[1] + gy[2] * e[2]);
  const float det = a00 * a11 - a01 * a01;
  if (!(det > 0.0f)) return false;
  const float inv_det = 1.0f / det;
  *du = (a11 * b0 - a01 * b1) * inv_det;
  *dv = (a00 * b1 - a01 * b0) * inv_det;
  return finitef(*du) && finitef(*dv);
}

// ---------------------------------------------------------------------------------------------------
// Iterative projective matching of one query ray (docs/algorithm.md section 2, step 4).
// ---------------------------------------------------------------------------------------------------

struct IprojParams {
  int max_iter;       // LM iterations
  float lambda_init;  // initial damping
  float cost_thresh;  // converged iff final |psi_hat(p) - t|^2 < cost_thresh
  float step_tol;     // stop once a proposed step is below this in |du| and |dv| (pixels); 0 = never
};

// Levenberg-Marquardt on p = (u, v) minimising |psi_hat(p) - t|^2. The start and every candidate are
// clamped to [1, W-2] x [1, H-2]. A candidate is accepted iff its cost is strictly lower
// (lambda *= 0.1), otherwise lambda *= 10. At most max_iter iterations; stops early when the cost is
// exactly 0 (nothing can be accepted any more) or when a proposed step is below step_tol in both u and v
// (p has settled: the remaining steps would move it by less than that; the step is not applied).
//
// The iteration is split into a state (`IprojState`), its start (`iproj_begin`) and one step
// (`iproj_next`, false once finished) so that a CPU loop can advance several independent queries in
// lockstep (each query's next step waits on its own last result); `iproj_point` runs one query to the end.
struct IprojState {
  float u, v;     // current estimate
  float s[9];     // ray image (ray + its u, v gradients) sampled at (u, v)
  float e[3];     // ray residual at (u, v)
  float cost;     // |e|^2
  float lambda;   // damping
  int it;         // iterations done
  bool running;   // false once finished
};

MSLAM_HD void iproj_begin(const float* __restrict__ img, int H, int W, const float t[3], float u, float v,
                          const IprojParams& prm, IprojState& st) {
  st.u = clampf(u, 1.0f, static_cast<float>(W - 2));
  st.v = clampf(v, 1.0f, static_cast<float>(H - 2));
  bilinear9(img, H, W, st.u, st.v, st.s);
  st.cost = ray_residual(st.s, t, st.e);
  st.lambda = prm.lambda_init;
  st.it = 0;
  st.running = prm.max_iter > 0 && st.cost > 0.0f;
}

// One LM iteration of a running state; returns whether it is still running afterwards.
MSLAM_HD bool iproj_next(const float* __restrict__ img, int H, int W, const float t[3], const IprojParams& prm,
                         IprojState& st) {
  float du = 0.0f, dv = 0.0f;
  bool accepted = false;
  if (lm_step(st.s, st.e, st.lambda, &du, &dv)) {
    if (fabsf(du) < prm.step_tol && fabsf(dv) < prm.step_tol) {
      st.running = false;  // settled: the step is not applied
      return false;
    }
    const float un = clampf(st.u + du, 1.0f, static_cast<float>(W - 2));
    const float vn = clampf(st.v + dv, 1.0f, static_cast<float>(H - 2));
    const Bilinear bl(H, W, un, vn);
    float sn[9];
    float en[3];
    bl.sample<0, 3>(img, sn);  // the ray decides; its gradients are only needed if accepted
    const float cn = ray_residual(sn, t, en);
    if (cn < st.cost) {
      accepted = true;
      st.u = un;
      st.v = vn;
      st.cost = cn;
      st.s[0] = sn[0];
      st.s[1] = sn[1];
      st.s[2] = sn[2];
      bl.sample<3, 9>(img, st.s);
      st.e[0] = en[0];
      st.e[1] = en[1];
      st.e[2] = en[2];
    }
  }
  st.lambda = accepted ? st.lambda * 0.1f : st.lambda * 10.0f;
  ++st.it;
  st.running = st.it < prm.max_iter && st.cost > 0.0f;
  return st.running;
}

MSLAM_HD void iproj_point(const float* __restrict__ img,  // [H, W, 9]
                          int H, int W,
                          const float t[3],  // unit target ray
                          float u, float v,  // initial guess
                          const IprojParams& prm,
                          float* out_u, float* out_v, bool* out_converged) {
  IprojState st;
  iproj_begin(img, H, W, t, u, v, prm, st);
  while (st.running && iproj_next(img, H, W, t, prm, st)) {
  }
  *out_u = st.u;
  *out_v = st.v;
  *out_converged = st.cost < prm.cost_thresh;
}

// ---------------------------------------------------------------------------------------------------
// Matching on known pinhole rays (docs/algorithm.md section 2, calibrated tracking): IPM's fixed point in
// closed form, then the occlusion test.
// ---------------------------------------------------------------------------------------------------

struct ProjectParams {
  float cost_thresh;  // converged iff |r(p) / |r(p)| - x / |x||^2 < cost_thresh (IPM's cost at the pixel)
  float dist_thresh;  // valid iff converged and |X_i[p] - x| < dist_thresh (the occlusion test)
};

struct ProjectCamera {
  float k[9];   // K, row-major
  float ki[9];  // K^-1, row-major
};

// The camera of one image from its K and K^-1 ([9] each, row-major), held by value: every point of the image
// reads the same 18 numbers.
MSLAM_HD ProjectCamera project_camera(const float* __restrict__ k, const float* __restrict__ ki) {
  ProjectCamera c;
  for (int j = 0; j < 9; ++j) {
    c.k[j] = k[j];
    c.ki[j] = ki[j];
  }
  return c;
}

// Clamp as two selects (max, then min): the CPU loop over points vectorises it (maxps, minps). Equals clampf
// for every non-NaN x (the inputs are finite).
MSLAM_HD float clamp_select(float x, float lo, float hi) {
  const float a = x > lo ? x : lo;
  return a < hi ? a : hi;
}

// Step 1 for one point x = (x0, x1, x2) (X^j_i, in camera i): the pixel (u, v) = K x / (K x)_z clamped to
// [1, W-2] x [1, H-2] (a point behind the camera has its depth floored at 1e-12 and lands on the border);
// returns IPM's cost test at that pixel: the unit ray of K there within cost_thresh of x / |x|. Sums left
// to right, every product and sum rounded to float (the twin's order); no branch (the CPU loop vectorises).
MSLAM_HD bool project_pixel(const ProjectCamera& c, int H, int W, float x0, float x1, float x2, float cost_thresh,
                            float* out_u, float* out_v) {
  const float* k = c.k;
  const float* ki = c.ki;
  const float s = sqrtf(x0 * x0 + x1 * x1 + x2 * x2);
  const float nrm = s > 1e-12f ? s : 1e-12f;
  const float t[3] = {x0 / nrm, x1 / nrm, x2 / nrm};
  const float z = k[6] * x0 + k[7] * x1 + k[8] * x2;
  const float w = z > 1e-12f ? z : 1e-12f;
  const float u = clamp_select((k[0] * x0 + k[1] * x1 + k[2] * x2) / w, 1.0f, static_cast<float>(W - 2));
  const float v = clamp_select((k[3] * x0 + k[4] * x1 + k[5] * x2) / w, 1.0f, static_cast<float>(H - 2));
  float r[3];
  for (int i = 0; i < 3; ++i) r[i] = ki[3 * i] * u + ki[3 * i + 1] * v + ki[3 * i + 2];  // K^-1 [u, v, 1]
  const float inv_n = 1.0f / sqrtf(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  float cost = 0.0f;
  for (int i = 0; i < 3; ++i) {
    const float e = r[i] * inv_n - t[i];
    cost = cost + e * e;
  }
  *out_u = u;
  *out_v = v;
  return cost < cost_thresh;
}

// Step 2, the occlusion test: the point of image i's pointmap Xi [H, W, 3] at integer pixel (iu, iv) is
// within dist_thresh of x.
MSLAM_HD bool project_occlusion_ok(const float* __restrict__ Xi, int W, int iu, int iv, float x0, float x1,
                                   float x2, float dist_thresh) {
  const float* X = Xi + (static_cast<int64_t>(iv) * W + iu) * 3;
  const float d0 = X[0] - x0, d1 = X[1] - x1, d2 = X[2] - x2;
  return sqrtf(d0 * d0 + d1 * d1 + d2 * d2) < dist_thresh;
}

// Matching on known rays for one point x [3] against image i (pointmap Xi on the rays of camera c): the
// integer pixel (truncation of step 1's; u, v >= 1 so it is the floor) and valid = cost test && occlusion test.
MSLAM_HD void project_point(const float* __restrict__ Xi, int H, int W, const ProjectCamera& c, const float x[3],
                            const ProjectParams& prm, int64_t* out_u, int64_t* out_v, bool* out_valid) {
  float u, v;
  const bool conv = project_pixel(c, H, W, x[0], x[1], x[2], prm.cost_thresh, &u, &v);
  const int iu = static_cast<int>(u), iv = static_cast<int>(v);
  *out_u = iu;
  *out_v = iv;
  *out_valid = conv && project_occlusion_ok(Xi, W, iu, iv, x[0], x[1], x[2], prm.dist_thresh);
}

// ---------------------------------------------------------------------------------------------------
// Descriptor refinement of one query pixel (docs/algorithm.md section 2, step 6).
// ---------------------------------------------------------------------------------------------------

template <typename T>
MSLAM_HD float to_float(T x) {
  return static_cast<float>(x);
}

// dot(a, q) accumulated in float in 8 interleaved lanes (lane = k mod 8), the lanes summed as
// ((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7)). The fixed order makes the result identical on every build and
// lets the compiler vectorise the lanes. FC > 0 fixes F at compile time (full unrolling).
template <int FC, typename TA, typename TQ>
MSLAM_HD float dot_lanes(const TA* __restrict__ a, const TQ* __restrict__ q, int F_runtime) {
  const int F = FC > 0 ? FC : F_runtime;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int k = 0;
  for (; k + 8 <= F; k += 8) {
MSLAM_UNROLL
    for (int l = 0; l < 8; ++l) acc[l] += to_float(a[k + l]) * to_float(q[k + l]);
  }
  for (int l = 0; k + l < F; ++l) acc[l] += to_float(a[k + l]) * to_float(q[k + l]);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

struct RefineParams {
  int radius;        // window half-size r: offsets -r..r (times the dilation) in u and v
  int dilation_max;  // dilations dilation_max, ..., 1
};

MSLAM_HD float max2(float a, float b) { return a > b ? a : b; }

MSLAM_HD float max8(const float s[8]) {
  return max2(max2(max2(s[0], s[1]), max2(s[2], s[3])), max2(max2(s[4], s[5]), max2(s[6], s[7])));
}

// Scores one row of candidates of image i against the query descriptor: sc[k] = dot(q, D_i[y, x0 + k step])
// for k < n (n <= 8) and sc[k] = 0 for k >= n, with dot_lanes; returns max(sc[0..7]). The portable scorer;
// the CPU build's AVX2 path (matching_cpu.cpp, refine_point_avx) scores whole windows with the same
// arithmetic and scan order instead, so every build returns the same pixel.
template <int FC, typename TI, typename TQ>
struct LaneScorer {
  const TI* __restrict__ Di;  // [H, W, F] descriptors of image i
  const TQ* __restrict__ q;   // [F] query descriptor
  int W;
  int F;
  MSLAM_HD float operator()(int x0, int y, int step, int n, float sc[8]) const {
    const TI* row = Di + static_cast<long long>(y) * W * F;
    for (int k = 0; k < 8; ++k) {
      sc[k] = k < n ? dot_lanes<FC>(row + static_cast<long long>(x0 + k * step) * F, q, F) : 0.0f;
    }
    return max8(sc);
  }
};

// Multi-dilation window search. For d = dilation_max .. 1: scan the (2r+1)^2 candidates centre + d*(dx, dy)
// (dy outer, dx inner, both -r..r) that lie inside the image, scored by `scorer` (dot of the query
// descriptor with D_i at the candidate); the best strictly positive score (the first one on ties) becomes
// the centre for the next d. If no score is > 0 the centre stays. The start pixel is clamped into the image.
template <class Scorer>
MSLAM_HD void refine_point(const Scorer& scorer, int H, int W, const RefineParams& prm, int* u, int* v) {
  int cu = clampi(*u, 0, W - 1);
  int cv = clampi(*v, 0, H - 1);
  const int r = prm.radius;
  float sc[8];
  for (int d = prm.dilation_max; d >= 1; --d) {
    int dx_lo = -r, dx_hi = r;  // the columns cu + dx d inside [0, W)
    while (dx_lo <= dx_hi && cu + dx_lo * d < 0) ++dx_lo;
    while (dx_hi >= dx_lo && cu + dx_hi * d > W - 1) --dx_hi;
    float best = 0.0f;
    int bu = cu, bv = cv;
    for (int dy = -r; dy <= r; ++dy) {
      const int y = cv + dy * d;
      if (y < 0 || y >= H) continue;
      for (int k0 = dx_lo; k0 <= dx_hi; k0 += 8) {
        const int n = dx_hi - k0 + 1 < 8 ? dx_hi - k0 + 1 : 8;
        const float m = scorer(cu + k0 * d, y, d, n, sc);  // sc[n..7] are 0: they never beat best >= 0
        if (m > best) {  // rare after the first rows: the first k reaching the row maximum wins
          int k = 0;
          while (sc[k] != m) ++k;
          best = m;
          bu = cu + (k0 + k) * d;
          bv = y;
        }
      }
    }
    cu = bu;
    cv = bv;
  }
  *u = cu;
  *v = cv;
}

}  // namespace matching
}  // namespace mslam
