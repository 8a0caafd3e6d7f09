// CPU build of the matching kernels: at::parallel_for loops over (batch, point) around the per-element
// bodies of matching.h. The Python wrapper (mslam_ns.cuda.matching) has already checked shapes, dtypes and
// finiteness and made every input contiguous; each binding guards the C++ boundary with its kernel's one
// check function (matching_checks.h, shared with the CUDA build).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "matching/matching.h"
#include "matching/matching_checks.h"

namespace {

using mslam::matching::IprojParams;
using mslam::matching::ProjectParams;
using mslam::matching::RefineParams;

constexpr int64_t kIprojGrain = 512;     // points per task
constexpr int kIprojLanes = 4;           // IPM queries advanced in lockstep
constexpr int64_t kProjectGrain = 4096;  // points per task
constexpr int64_t kProjectChunk = 256;   // points per pass of project_match's two passes
constexpr int64_t kRefineGrain = 256;    // points per task

std::tuple<at::Tensor, at::Tensor> iproj(const at::Tensor& rays,     // [B, H, W, 9] float32
                                         const at::Tensor& targets,  // [B, N, 3] float32
                                         const at::Tensor& p_init,   // [B, N, 2] float32 (u, v)
                                         int64_t max_iter, double lambda_init, double cost_thresh,
                                         double step_tol) {
  const auto dims = mslam::matching::check_iproj(rays, targets, p_init, c10::DeviceType::CPU);
  const int64_t B = dims.B, H = dims.H, W = dims.W, N = dims.N;

  at::Tensor p = at::empty({B, N, 2}, p_init.options());                    // [B, N, 2]
  at::Tensor converged = at::empty({B, N}, p_init.options().dtype(at::kBool));  // [B, N]
  const float* img = rays.data_ptr<float>();
  const float* tgt = targets.data_ptr<float>();
  const float* p0 = p_init.data_ptr<float>();
  float* pout = p.data_ptr<float>();
  bool* conv = converged.data_ptr<bool>();
  const IprojParams prm{static_cast<int>(max_iter), static_cast<float>(lambda_init),
                        static_cast<float>(cost_thresh), static_cast<float>(step_tol)};
  const int64_t img_stride = H * W * 9;

  // kIprojLanes queries at a time, advanced in lockstep: each LM step waits on its own previous one
  // (sample -> residual -> 2x2 solve -> sample), and the other queries' independent steps fill that wait.
  // Each query's result is exactly what iproj_point gives it alone.
  at::parallel_for(0, B * N, kIprojGrain, [&](int64_t begin, int64_t end) {
    using mslam::matching::IprojState;
    const int h = static_cast<int>(H), w = static_cast<int>(W);
    for (int64_t i0 = begin; i0 < end; i0 += kIprojLanes) {
      IprojState st[kIprojLanes];
      const float* im[kIprojLanes];
      int64_t id[kIprojLanes];
      bool any = false;
      for (int l = 0; l < kIprojLanes; ++l) {
        id[l] = i0 + l < end ? i0 + l : end - 1;  // a short tail runs its last query again (same result)
        im[l] = img + (id[l] / N) * img_stride;
        mslam::matching::iproj_begin(im[l], h, w, tgt + id[l] * 3, p0[id[l] * 2], p0[id[l] * 2 + 1], prm, st[l]);
        any |= st[l].running;
      }
      while (any) {
        any = false;
        for (int l = 0; l < kIprojLanes; ++l) {
          if (st[l].running) any |= mslam::matching::iproj_next(im[l], h, w, tgt + id[l] * 3, prm, st[l]);
        }
      }
      for (int l = 0; l < kIprojLanes; ++l) {
        pout[id[l] * 2] = st[l].u;
        pout[id[l] * 2 + 1] = st[l].v;
        conv[id[l]] = st[l].cost < prm.cost_thresh;
      }
    }
  });
  return {p, converged};
}

// Matching on known rays (project_point of matching.h).
std::tuple<at::Tensor, at::Tensor> project_match(const at::Tensor& X_i,    // [B, H, W, 3] float32
                                                 const at::Tensor& pts,    // [B, N, 3] float32
                                                 const at::Tensor& K,      // [B, 3, 3] float32
                                                 const at::Tensor& K_inv,  // [B, 3, 3] float32
                                                 double cost_thresh, double dist_thresh) {
  const auto dims = mslam::matching::check_project(X_i, pts, K, K_inv, c10::DeviceType::CPU);
  const int64_t B = dims.B, H = dims.H, W = dims.W, N = dims.N;
  at::Tensor p = at::empty({B, N, 2}, pts.options().dtype(at::kLong));   // [B, N, 2]
  at::Tensor valid = at::empty({B, N}, pts.options().dtype(at::kBool));  // [B, N]
  const float* Xi = X_i.data_ptr<float>();
  const float* x = pts.data_ptr<float>();
  const float* k = K.data_ptr<float>();
  const float* ki = K_inv.data_ptr<float>();
  int64_t* pout = p.data_ptr<int64_t>();
  bool* ok = valid.data_ptr<bool>();
  const ProjectParams prm{static_cast<float>(cost_thresh), static_cast<float>(dist_thresh)};
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  // project_point in two passes over chunks of one image's points: step 1 on coordinate planes (no branch,
  // no gather: the compiler vectorises it), then the occlusion test's gathers.
  at::parallel_for(0, B * N, kProjectGrain, [&](int64_t begin, int64_t end) {
    float xs[kProjectChunk], ys[kProjectChunk], zs[kProjectChunk], us[kProjectChunk], vs[kProjectChunk];
    bool conv[kProjectChunk];
    for (int64_t c0 = begin; c0 < end;) {
      const int64_t b = c0 / N;
      const int n = static_cast<int>(std::min({end - c0, kProjectChunk, (b + 1) * N - c0}));
      const auto cam = mslam::matching::project_camera(k + b * 9, ki + b * 9);
      const float* xc = x + c0 * 3;
      for (int i = 0; i < n; ++i) {
        xs[i] = xc[3 * i];
        ys[i] = xc[3 * i + 1];
        zs[i] = xc[3 * i + 2];
      }
      for (int i = 0; i < n; ++i) {
        conv[i] = mslam::matching::project_pixel(cam, h, w, xs[i], ys[i], zs[i], prm.cost_thresh, us + i, vs + i);
      }
      const float* img = Xi + b * H * W * 3;
      for (int i = 0; i < n; ++i) {
        const int iu = static_cast<int>(us[i]), iv = static_cast<int>(vs[i]);  // u, v >= 1: the floor
        pout[(c0 + i) * 2] = iu;
        pout[(c0 + i) * 2 + 1] = iv;
        ok[c0 + i] =
            conv[i] && mslam::matching::project_occlusion_ok(img, w, iu, iv, xs[i], ys[i], zs[i], prm.dist_thresh);
      }
      c0 += n;
    }
  });
  return {p, valid};
}

// ---------------------------------------------------------------------------------------------------
// Descriptor refinement. Two paths with the same result:
//  * portable: refine_point (matching.h) with LaneScorer on float32 copies of the descriptors (any F, CPU);
//  * x86-64 with AVX2 + F16C and F = 8 K (K <= 4): refine_two_avx reads fp16 or fp32 storage directly,
//    scores a row of up to 8 candidates at once (multiply then add, no FMA, the 8 lanes reduced in
//    dot_lanes' order, so scores are bit-identical to the portable scorer and the PyTorch twin) and picks
//    each window's winner without data-dependent branches.
// ---------------------------------------------------------------------------------------------------

struct RefineArgs {
  const void* Di;       // [B, H, W, F] float32, or float16 for the AVX scorer
  const float* Dj;      // [B, N, F] float32
  const int64_t* p_in;  // [B, N, 2]
  int64_t* p_out;       // [B, N, 2]
  int64_t N;
  int H, W, F;
  RefineParams prm;
};

// Loop over the points ids[0..n) with the scorer made by make_scorer(Di of the batch, query).
template <typename T, class MakeScorer>
inline void refine_loop(const RefineArgs& a, const int64_t* ids, int64_t n, const MakeScorer& make_scorer) {
  const int64_t img_stride = static_cast<int64_t>(a.H) * a.W * a.F;
  const T* Di_all = static_cast<const T*>(a.Di);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = ids[k];
    const int64_t b = i / a.N;
    // Clamp in 64 bits before narrowing to int (the body clamps again into the image).
    int u = static_cast<int>(std::min<int64_t>(std::max<int64_t>(a.p_in[i * 2], 0), a.W - 1));
    int v = static_cast<int>(std::min<int64_t>(std::max<int64_t>(a.p_in[i * 2 + 1], 0), a.H - 1));
    mslam::matching::refine_point(make_scorer(Di_all + b * img_stride, a.Dj + i * a.F), a.H, a.W, a.prm, &u, &v);
    a.p_out[i * 2] = u;
    a.p_out[i * 2 + 1] = v;
  }
}

template <int FC>
void refine_portable(const RefineArgs& a, const int64_t* ids, int64_t n) {
  refine_loop<float>(a, ids, n, [&](const float* Di, const float* q) {
    return mslam::matching::LaneScorer<FC, float, float>{Di, q, a.W, a.F};
  });
}

void refine_portable_any(const RefineArgs& a, const int64_t* ids, int64_t n) {
  switch (a.F) {
    case 16: refine_portable<16>(a, ids, n); break;
    case 24: refine_portable<24>(a, ids, n); break;
    case 32: refine_portable<32>(a, ids, n); break;
    default: refine_portable<0>(a, ids, n); break;
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MSLAM_HAVE_AVX_SCORER 1
#define MSLAM_AVX __attribute__((target("avx2,f16c")))

MSLAM_AVX inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
MSLAM_AVX inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Scores of one row of up to 8 candidates, lane c = candidate c (c < n), lanes n..7 = 0:
// dot(q, D_i[c]) with the products of 8 channels added in order over the K groups (multiply then add, no
// FMA), then the 8 lanes reduced as ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7)), i.e. bit-identical to dot_lanes.
// Measured and not kept (2026-12-08, Zen 5 with AVX-512): a 512-bit scorer holding two candidates per register
// (half the conversions, multiplies and adds, same per-lane order, bit-identical) was 1.2x faster than this one
// on its own with the data in L1, but the whole refinement took 0.93-1.07x of this path's time, and so did
// scoring the two queries' rows interleaved in one loop; cutting the argmax dependency between windows (a test
// build) changed nothing either. About 1150 instructions per window (radius 3, callgrind) at ~1.2 ns per
// candidate per core.
template <int K, typename T>
MSLAM_AVX inline __m256 score_row(const T* base, int64_t stride, int n, const __m256 q[K]) {
  __m256 acc[8];
  for (int c = 0; c < 8; ++c) {
    if (c < n) {
      const T* a = base + c * stride;
      __m256 s = _mm256_mul_ps(load8(a), q[0]);
      for (int k = 1; k < K; ++k) s = _mm256_add_ps(s, _mm256_mul_ps(load8(a + 8 * k), q[k]));
      acc[c] = s;
    } else {
      acc[c] = _mm256_setzero_ps();
    }
  }
  // Lane sums of 8 candidates at once: fold halves (l_i + l_{i+4}), then two pairwise levels.
  const __m256 t0 = _mm256_add_ps(_mm256_permute2f128_ps(acc[0], acc[1], 0x20),
                                  _mm256_permute2f128_ps(acc[0], acc[1], 0x31));
  const __m256 t1 = _mm256_add_ps(_mm256_permute2f128_ps(acc[2], acc[3], 0x20),
                                  _mm256_permute2f128_ps(acc[2], acc[3], 0x31));
  const __m256 t2 = _mm256_add_ps(_mm256_permute2f128_ps(acc[4], acc[5], 0x20),
                                  _mm256_permute2f128_ps(acc[4], acc[5], 0x31));
  const __m256 t3 = _mm256_add_ps(_mm256_permute2f128_ps(acc[6], acc[7], 0x20),
                                  _mm256_permute2f128_ps(acc[6], acc[7], 0x31));
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));  // c = 0 2 4 6 1 3 5 7
  return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One dilation d of refine_point (matching.h) for one query, the window scored branch-free: all rows are
// scored into `buf` first (scan order: dy outer, then dx in chunks of 8), then the winner is the first
// candidate in scan order whose score equals the window maximum, if that maximum is > 0. That is exactly
// the candidate refine_point's running "strictly better" scan keeps, but without a data-dependent branch
// per row (each mispredicted one discarded a whole row's worth of work in flight).
template <int K, typename T>
MSLAM_AVX inline void refine_window_avx(const T* Di, const __m256 q[K], int H, int W, int r, int d, float* buf,
                                        int& cu, int& cv) {
  constexpr int F = 8 * K;
  int dx_lo = -r, dx_hi = r;  // the columns cu + dx d inside [0, W)
  while (dx_lo <= dx_hi && cu + dx_lo * d < 0) ++dx_lo;
  while (dx_hi >= dx_lo && cu + dx_hi * d > W - 1) --dx_hi;
  int dy_lo = -r, dy_hi = r;  // the rows cv + dy d inside [0, H)
  while (dy_lo <= dy_hi && cv + dy_lo * d < 0) ++dy_lo;
  while (dy_hi >= dy_lo && cv + dy_hi * d > H - 1) --dy_hi;
  const int ncol = dx_hi - dx_lo + 1;  // >= 1: dx = 0 is always inside
  const int nch = (ncol + 7) / 8;
  const int64_t stride = static_cast<int64_t>(d) * F;
  __m256 vmax = _mm256_setzero_ps();
  int j = 0;
  for (int dy = dy_lo; dy <= dy_hi; ++dy) {
    const T* row = Di + (static_cast<int64_t>(cv + dy * d) * W + cu + dx_lo * d) * F;
    for (int ch = 0; ch < nch; ++ch, ++j) {
      const int n = ncol - 8 * ch < 8 ? ncol - 8 * ch : 8;
      const __m256 sc = score_row<K, T>(row + 8 * ch * stride, stride, n, q);
      _mm256_storeu_ps(buf + 8 * j, sc);
      vmax = _mm256_max_ps(vmax, sc);
    }
  }
  vmax = _mm256_max_ps(vmax, _mm256_permute2f128_ps(vmax, vmax, 0x01));
  vmax = _mm256_max_ps(vmax, _mm256_shuffle_ps(vmax, vmax, 0x4e));
  vmax = _mm256_max_ps(vmax, _mm256_shuffle_ps(vmax, vmax, 0xb1));
  const float m = _mm256_cvtss_f32(vmax);
  if (j <= 8 && nch == 1) {
    // Common case (radius <= 3): at most 8 rows of one chunk. The first lane equal to the maximum, found
    // from the 8-bit equality masks of the rows without a branch (the next window's loads wait on it).
    uint64_t bits = 1ull << 63;  // sentinel; not reached when m > 0
    for (int i = 0; i < j; ++i) {
      const uint64_t mask = static_cast<unsigned>(
          _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(buf + 8 * i), vmax, _CMP_EQ_OQ)));
      bits |= mask << (8 * i);
    }
    const int idx = __builtin_ctzll(bits);
    const bool take = m > 0.0f;  // else no score is > 0 and the centre stays
    cu = take ? cu + (dx_lo + (idx & 7)) * d : cu;
    cv = take ? cv + (dy_lo + (idx >> 3)) * d : cv;
  } else if (m > 0.0f) {  // else no score is > 0 and the centre stays
    int i = 0, mask = 0;
    while ((mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(buf + 8 * i), vmax, _CMP_EQ_OQ))) == 0) ++i;
    const int k = 8 * (i % nch) + __builtin_ctz(static_cast<unsigned>(mask));
    cu = cu + (dx_lo + k) * d;
    cv = cv + (dy_lo + i / nch) * d;
  }
}

// refine_point (matching.h) for kLanes independent queries, their windows interleaved dilation by
// dilation: each query's next window waits on its previous argmax (a chain of load -> score -> reduce ->
// compare), and the other queries' independent work fills that wait. Every query's result is exactly what
// it would be alone.
constexpr int kLanes = 2;

template <int K, typename T>
MSLAM_AVX __attribute__((flatten)) void refine_avx(const RefineArgs& a, const int64_t* ids, int64_t n) {
  const int64_t img_stride = static_cast<int64_t>(a.H) * a.W * a.F;
  const T* Di_all = static_cast<const T*>(a.Di);
  const int side = 2 * a.prm.radius + 1;
  const size_t nbuf = static_cast<size_t>(side) * ((side + 7) / 8) * 8;  // one window's scores
  std::vector<float> buf(kLanes * nbuf);
  for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
    int64_t id[kLanes];
    int cu[kLanes], cv[kLanes];
    __m256 q[kLanes][K];
    for (int l = 0; l < kLanes; ++l) {
      id[l] = ids[i0 + l < n ? i0 + l : n - 1];  // a short tail refines its last point again (same result)
      // Clamp in 64 bits before narrowing to int (the window step clamps again into the image).
      cu[l] = static_cast<int>(std::min<int64_t>(std::max<int64_t>(a.p_in[id[l] * 2], 0), a.W - 1));
      cv[l] = static_cast<int>(std::min<int64_t>(std::max<int64_t>(a.p_in[id[l] * 2 + 1], 0), a.H - 1));
      for (int k = 0; k < K; ++k) q[l][k] = _mm256_loadu_ps(a.Dj + id[l] * a.F + 8 * k);
    }
    for (int d = a.prm.dilation_max; d >= 1; --d) {
      for (int l = 0; l < kLanes; ++l) {
        refine_window_avx<K, T>(Di_all + (id[l] / a.N) * img_stride, q[l], a.H, a.W, a.prm.radius, d,
                                buf.data() + l * nbuf, cu[l], cv[l]);
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      a.p_out[id[l] * 2] = cu[l];
      a.p_out[id[l] * 2 + 1] = cv[l];
    }
  }
}

template <typename T>
void refine_avx_any(const RefineArgs& a, const int64_t* ids, int64_t n) {
  switch (a.F) {
    case 8: refine_avx<1, T>(a, ids, n); break;
    case 16: refine_avx<2, T>(a, ids, n); break;
    case 24: refine_avx<3, T>(a, ids, n); break;
    case 32: refine_avx<4, T>(a, ids, n); break;
    default: TORCH_CHECK(false, "no AVX scorer for F = ", a.F);
  }
}

bool avx_scorer_usable(int64_t F) {
  static const bool cpu_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return cpu_ok && F % 8 == 0 && F >= 8 && F <= 32;
}
#else
bool avx_scorer_usable(int64_t) { return false; }
#endif

at::Tensor refine_matches(const at::Tensor& D_i,  // [B, H, W, F] float32 or float16
                          const at::Tensor& D_j,  // [B, N, F] float32 or float16
                          const at::Tensor& p,    // [B, N, 2] int64 (u, v)
                          int64_t radius, int64_t dilation_max,
                          const c10::optional<at::Tensor>& mask) {  // [B, N] bool: refine these; others kept
  const auto dims = mslam::matching::check_refine(D_i, D_j, p, radius, dilation_max, c10::DeviceType::CPU);
  mslam::matching::check_refine_mask(mask, dims, c10::DeviceType::CPU);
  const int64_t B = dims.B, H = dims.H, W = dims.W, F = dims.F, N = dims.N;

  const bool avx = avx_scorer_usable(F);
  // Every descriptor of image i is read ~245 times: convert fp16 once up front (ATen, vectorised) unless
  // the AVX scorer converts in registers. The queries are converted once either way.
  const at::Tensor Di = avx ? D_i : D_i.to(at::kFloat).contiguous();  // [B, H, W, F]
  const at::Tensor Dj = D_j.to(at::kFloat).contiguous();              // [B, N, F]
  at::Tensor out = at::empty_like(p);                                  // [B, N, 2]
  const RefineArgs args{Di.data_ptr(),
                        Dj.data_ptr<float>(),
                        p.data_ptr<int64_t>(),
                        out.data_ptr<int64_t>(),
                        N,
                        static_cast<int>(H),
                        static_cast<int>(W),
                        static_cast<int>(F),
                        RefineParams{static_cast<int>(radius), static_cast<int>(dilation_max)}};
  const bool half = Di.scalar_type() == at::kHalf;
  const bool* keep = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  at::parallel_for(0, B * N, kRefineGrain, [&](int64_t begin, int64_t end) {
    // The task's points to refine; a masked-out point is returned as given.
    std::vector<int64_t> ids;
    ids.reserve(static_cast<size_t>(end - begin));
    for (int64_t i = begin; i < end; ++i) {
      if (keep == nullptr || keep[i]) {
        ids.push_back(i);
      } else {
        args.p_out[i * 2] = args.p_in[i * 2];
        args.p_out[i * 2 + 1] = args.p_in[i * 2 + 1];
      }
    }
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n == 0) return;
#ifdef MSLAM_HAVE_AVX_SCORER
    if (avx) {
      if (half) {
        refine_avx_any<at::Half>(args, ids.data(), n);
      } else {
        refine_avx_any<float>(args, ids.data(), n);
      }
      return;
    }
#endif
    (void)half;
    refine_portable_any(args, ids.data(), n);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mslam_ns matching kernels (CPU)";
  m.def("iproj", &iproj, "Iterative projective matching (LM per query ray)", py::arg("rays_img"),
        py::arg("targets"), py::arg("p_init"), py::arg("max_iter"), py::arg("lambda_init"),
        py::arg("cost_thresh"), py::arg("step_tol"));
  m.def("project_match", &project_match, "Matching on known pinhole rays: projection and occlusion test",
        py::arg("X_i"), py::arg("pts"), py::arg("K"), py::arg("K_inv"), py::arg("cost_thresh"),
        py::arg("dist_thresh"));
  m.def("refine_matches", &refine_matches, "Multi-dilation descriptor refinement", py::arg("D_i"),
        py::arg("D_j"), py::arg("p"), py::arg("radius"), py::arg("dilation_max"), py::arg("mask") = py::none());
}
