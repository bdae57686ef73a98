// Depthwise k x k 'same' correlation of channels-last float32 maps and its kernel gradient, as
// XLA FFI handlers for the CPU (xecjax.native builds and registers them). XLA:CPU runs these as
// many shifted passes over memory; here each output row is accumulated in registers from rows
// that stay in cache. Work is split over (event, row) chunks on XLA's intra-op thread pool.
//
//   y[b, h, w, c]  = sum_ij x[b, h + i - p, w + j - p, c] * k[i, j, c]     (zero outside; p = k / 2)
//   dk[i, j, c]    = sum_bhw x[b, h + i - p, w + j - p, c] * g[b, h, w, c]
//
// The kernel gradient sums a fixed number of row chunks in a fixed order: the result does not
// depend on the number of threads or on their timing.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// fn(t) for t in [0, n) on the calling thread and the intra-op pool. The caller takes chunks
// itself and waits only for chunks that are already running on another thread, so it cannot
// deadlock when every pool thread is busy (or blocked in another such call).
struct Chunks {
  std::function<void(int64_t)> fn;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    for (int64_t t; (t = next.fetch_add(1)) < n;) {
      fn(t);
      if (done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  auto chunks = std::make_shared<Chunks>();
  chunks->fn = std::move(fn);
  chunks->n = n;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([chunks] { chunks->Work(); });
  chunks->Work();
  std::unique_lock<std::mutex> lock(chunks->mu);
  chunks->cv.wait(lock, [&] { return chunks->done.load() == chunks->n; });
}

struct Shape {
  int64_t b, h, w, c;
  int k;
};

// One output row (b, h). C > 0: the channel count known at compile time (the accumulator lives in
// registers); C == 0: any channel count, accumulator in `scratch`.
template <int C>
void ForwardRow(const Shape& s, const float* x, const float* kernel, float* y, int64_t b,
                int64_t h, float* scratch) {
  const int64_t nc = C > 0 ? C : s.c;
  const int p = s.k / 2;
  float reg[C > 0 ? C : 1];
  float* acc = C > 0 ? reg : scratch;
  for (int64_t w = 0; w < s.w; ++w) {
    for (int64_t c = 0; c < nc; ++c) acc[c] = 0.f;
    for (int i = 0; i < s.k; ++i) {
      const int64_t hi = h + i - p;
      if (hi < 0 || hi >= s.h) continue;
      const float* row = x + (b * s.h + hi) * s.w * nc;
      const int j0 = static_cast<int>(std::max<int64_t>(0, p - w));
      const int j1 = static_cast<int>(std::min<int64_t>(s.k, s.w + p - w));
      for (int j = j0; j < j1; ++j) {
        const float* xv = row + (w + j - p) * nc;
        const float* kv = kernel + (i * s.k + j) * nc;
        for (int64_t c = 0; c < nc; ++c) acc[c] += xv[c] * kv[c];
      }
    }
    float* out = y + ((b * s.h + h) * s.w + w) * nc;
    for (int64_t c = 0; c < nc; ++c) out[c] = acc[c];
  }
}

// dk_part[i, j, :] += sum_w x[b, h + i - p, w + j - p, :] * g[b, h, w, :] for one row (b, h).
template <int C>
void KernelGradRow(const Shape& s, const float* x, const float* g, float* dk_part, int64_t b,
                   int64_t h, float* scratch) {
  const int64_t nc = C > 0 ? C : s.c;
  const int p = s.k / 2;
  float reg[C > 0 ? C : 1];
  float* acc = C > 0 ? reg : scratch;
  const float* grow = g + (b * s.h + h) * s.w * nc;
  for (int i = 0; i < s.k; ++i) {
    const int64_t hi = h + i - p;
    if (hi < 0 || hi >= s.h) continue;
    const float* xrow = x + (b * s.h + hi) * s.w * nc;
    for (int j = 0; j < s.k; ++j) {
      const int64_t w0 = std::max<int64_t>(0, p - j), w1 = std::min<int64_t>(s.w, s.w + p - j);
      for (int64_t c = 0; c < nc; ++c) acc[c] = 0.f;
      for (int64_t w = w0; w < w1; ++w) {
        const float* xv = xrow + (w + j - p) * nc;
        const float* gv = grow + w * nc;
        for (int64_t c = 0; c < nc; ++c) acc[c] += xv[c] * gv[c];
      }
      float* out = dk_part + (i * s.k + j) * nc;
      for (int64_t c = 0; c < nc; ++c) out[c] += acc[c];
    }
  }
}

template <typename F>
void WithChannels(int64_t c, F&& f) {
  switch (c) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

bool SameShape(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

ffi::Error CheckShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k, const char* what,
                       Shape* s) {
  if (x.size() != 4 || k.size() != 3 || k[0] != k[1] || k[0] % 2 == 0 || k[2] != x[3])
    return ffi::Error::InvalidArgument(std::string(what) +
                                       ": expected x [B, H, W, C] and kernel [k, k, C], k odd");
  *s = Shape{x[0], x[1], x[2], x[3], static_cast<int>(k[0])};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y) {
  Shape s;
  if (auto err = CheckShapes(x.dimensions(), kernel.dimensions(), "xecjax depthwise conv", &s);
      err.failure())
    return err;
  if (!SameShape(y->dimensions(), x.dimensions()))
    return ffi::Error::InvalidArgument("xecjax depthwise conv: y must have x's shape");
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = s.b * s.h;
  const int64_t n = std::min<int64_t>(rows, 64);
  WithChannels(s.c, [&](auto cc) {
    constexpr int C = decltype(cc)::value;
    ParallelFor(pool, n, [&](int64_t t) {
      std::vector<float> scratch(C > 0 ? 0 : s.c);
      for (int64_t r = rows * t / n; r < rows * (t + 1) / n; ++r)
        ForwardRow<C>(s, xp, kp, yp, r / s.h, r % s.h, scratch.data());
    });
  });
  return ffi::Error::Success();
}

constexpr int64_t kGradChunks = 32;

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dk) {
  Shape s;
  if (auto err = CheckShapes(x.dimensions(), dk->dimensions(), "xecjax depthwise kernel grad", &s);
      err.failure())
    return err;
  if (!SameShape(g.dimensions(), x.dimensions()))
    return ffi::Error::InvalidArgument("xecjax depthwise kernel grad: g must have x's shape");
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  const int64_t rows = s.b * s.h;
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(rows, kGradChunks));
  const int64_t size = static_cast<int64_t>(s.k) * s.k * s.c;
  std::vector<float> parts(n * size, 0.f);
  WithChannels(s.c, [&](auto cc) {
    constexpr int C = decltype(cc)::value;
    ParallelFor(pool, n, [&](int64_t t) {
      std::vector<float> scratch(C > 0 ? 0 : s.c);
      for (int64_t r = rows * t / n; r < rows * (t + 1) / n; ++r)
        KernelGradRow<C>(s, xp, gp, parts.data() + t * size, r / s.h, r % s.h, scratch.data());
    });
  });
  float* out = dk->typed_data();
  for (int64_t e = 0; e < size; ++e) {
    float sum = 0.f;
    for (int64_t t = 0; t < n; ++t) sum += parts[t * size + e];
    out[e] = sum;
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XecjaxDepthwiseForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [B, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [k, k, C]
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(XecjaxDepthwiseKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [B, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [B, H, W, C]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dk [k, k, C]
