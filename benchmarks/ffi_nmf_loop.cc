// The NMF layer's whole fixed-point loop (deepnmf_jax.core.ops.nmf_update with epsilon None, float32)
// as one XLA FFI custom call: an experiment of benchmarks/ffi_nmf_loop.py, not part of the package.
//
// Each thread takes a contiguous block of rows (positions) and runs all iterations on tiles of 4
// rows, so a tile, W and W^T stay in cache: R = W h + 1e-20 (16 lanes of S at a time, the 4 rows'
// accumulators in registers), x / R, then W^T (x / R) (16 lanes of I at a time), h * that, and the
// L1 normalisation. W is padded to multiples of 16 with zeros (padded x is 0, so x / R is 0 there).
// Threads come from XLA's intra-op pool (ffi::ThreadPool). Built by the driver with
// g++ -O3 -march=native against jax.ffi.include_dir().
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

typedef float v16 __attribute__((vector_size(64)));
static inline v16 splat(float a) { return v16{} + a; }
static inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

struct Layer {
  int64_t S, I, Sp, Ip;
  std::vector<float> wt;  // (I, Sp)
  std::vector<float> wp;  // (S, Ip)
};

// q[r, :] = x[r, :] / (sum_i h[r, i] wt[i, :] + 1e-20), NB vectors of 16 at a time
template <int R, int NB>
static inline void recon_block(const Layer& L, const float* h, const float* x, float* q, int64_t s0) {
  v16 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = v16{};
  for (int64_t i = 0; i < L.I; ++i) {
    const float* wrow = L.wt.data() + i * L.Sp + s0;
    v16 wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = load(wrow + 16 * b);
    for (int r = 0; r < R; ++r) {
      v16 hb = splat(h[r * L.Ip + i]);
      for (int b = 0; b < NB; ++b) acc[r][b] += hb * wv[b];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      int64_t off = r * L.Sp + s0 + 16 * b;
      store(q + off, load(x + off) / (acc[r][b] + 1e-20f));
    }
}

// d[r, :] = sum_s q[r, s] wp[s, :], NU vectors of 16 at a time
template <int R, int NU>
static inline void drive_block(const Layer& L, const float* q, float* d, int64_t i0) {
  v16 acc[R][NU];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NU; ++u) acc[r][u] = v16{};
  for (int64_t s = 0; s < L.S; ++s) {
    const float* wrow = L.wp.data() + s * L.Ip + i0;
    v16 wv[NU];
    for (int u = 0; u < NU; ++u) wv[u] = load(wrow + 16 * u);
    for (int r = 0; r < R; ++r) {
      v16 qb = splat(q[r * L.Sp + s]);
      for (int u = 0; u < NU; ++u) acc[r][u] += qb * wv[u];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NU; ++u) store(d + r * L.Ip + i0 + 16 * u, acc[r][u]);
}

template <int R>
static void tile(const Layer& L, const float* x_rows, float* h_out, int iterations, float* xp,
                 float* h, float* q, float* d) {
  // padded copies: x (R, Sp), h (R, Ip)
  std::memset(xp, 0, sizeof(float) * R * L.Sp);
  std::memset(h, 0, sizeof(float) * R * L.Ip);
  for (int r = 0; r < R; ++r) {
    std::memcpy(xp + r * L.Sp, x_rows + r * L.S, sizeof(float) * L.S);
    for (int64_t i = 0; i < L.I; ++i) h[r * L.Ip + i] = 1.0f / L.I;
  }
  const int64_t nv = L.Sp / 16, nu = L.Ip / 16;
  for (int it = 0; it < iterations; ++it) {
    int64_t v = 0;
    for (; v + 4 <= nv; v += 4) recon_block<R, 4>(L, h, xp, q, 16 * v);
    switch (nv - v) {
      case 3: recon_block<R, 3>(L, h, xp, q, 16 * v); break;
      case 2: recon_block<R, 2>(L, h, xp, q, 16 * v); break;
      case 1: recon_block<R, 1>(L, h, xp, q, 16 * v); break;
      default: break;
    }
    int64_t u = 0;
    for (; u + 4 <= nu; u += 4) drive_block<R, 4>(L, q, d, 16 * u);
    for (; u + 2 <= nu; u += 2) drive_block<R, 2>(L, q, d, 16 * u);
    for (; u < nu; ++u) drive_block<R, 1>(L, q, d, 16 * u);
    for (int r = 0; r < R; ++r) {
      float* hr = h + r * L.Ip;
      const float* dr = d + r * L.Ip;
      float sum = 0.0f;
      for (int64_t i = 0; i < L.I; ++i) {
        hr[i] *= dr[i];
        sum += hr[i];
      }
      float denom = sum + 1e-19f;
      for (int64_t i = 0; i < L.I; ++i) hr[i] = hr[i] / denom;
    }
  }
  for (int r = 0; r < R; ++r) std::memcpy(h_out + r * L.I, h + r * L.Ip, sizeof(float) * L.I);
}

static void run_rows(const Layer& L, const float* x, float* h_out, int64_t begin, int64_t end,
                     int iterations) {
  constexpr int R = 4;
  std::vector<float> buf(R * (2 * L.Sp + 2 * L.Ip) + 64);
  float *xp = buf.data(), *q = xp + R * L.Sp, *h = q + R * L.Sp, *d = h + R * L.Ip;
  int64_t p = begin;
  for (; p + R <= end; p += R) tile<R>(L, x + p * L.S, h_out + p * L.I, iterations, xp, h, q, d);
  for (; p < end; ++p) tile<1>(L, x + p * L.S, h_out + p * L.I, iterations, xp, h, q, d);
}

// x (..., P, S) and w (..., S, I) with the same leading (seed) axes -> h (..., P, I).
static ffi::Error NmfSolveImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> h,
                               int64_t iterations, int64_t threads) {
  auto xd = x.dimensions(), wd = w.dimensions();
  const size_t rank = wd.size();
  if (rank < 2 || xd.size() != rank || xd[rank - 1] != wd[rank - 2])
    return ffi::Error::InvalidArgument("nmf_solve: x must be (..., P, S) and w (..., S, I)");
  const int64_t S = wd[rank - 2], I = wd[rank - 1], P = xd[rank - 2];
  int64_t batch = 1;
  for (size_t k = 0; k + 2 < rank; ++k) batch *= wd[k];
  for (int64_t b = 0; b < batch; ++b) {
    Layer L{S, I, (S + 15) / 16 * 16, (I + 15) / 16 * 16, {}, {}};
    L.wt.assign(I * L.Sp, 0.0f);
    L.wp.assign(S * L.Ip, 0.0f);
    const float* wb = w.typed_data() + b * S * I;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < I; ++i) {
        L.wt[i * L.Sp + s] = wb[s * I + i];
        L.wp[s * L.Ip + i] = wb[s * I + i];
      }
    const float* xb = x.typed_data() + b * P * S;
    float* hb = h->typed_data() + b * P * I;
    const int it = static_cast<int>(iterations);
    // blocks of rows, a multiple of the tile; this thread runs the first, the pool the others
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, (P + 63) / 64));
    const int64_t block = ((P + n - 1) / n + 3) / 4 * 4;
    std::atomic<int64_t> pending(n - 1);
    const Layer* layer = &L;
    for (int64_t t = 1; t < n; ++t) {
      const int64_t lo = std::min(P, t * block), hi = std::min(P, (t + 1) * block);
      pool.Schedule([layer, xb, hb, lo, hi, it, &pending] {
        run_rows(*layer, xb, hb, lo, hi, it);
        pending.fetch_sub(1, std::memory_order_release);
      });
    }
    run_rows(L, xb, hb, 0, std::min(P, block), it);
    while (pending.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(NmfSolve, NmfSolveImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("iterations")
                                  .Attr<int64_t>("threads"));
