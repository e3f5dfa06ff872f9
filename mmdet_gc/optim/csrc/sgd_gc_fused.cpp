// Fused CPU kernel of SGD with Gradient Centralization (GC).
//
// Yong et al., "Gradient Centralization: A New Optimization Technique for
// Deep Neural Networks", ECCV 2020 (arXiv:2004.01461).
//
// One call updates a list of centralized parameters. For each output row of
// a parameter p (dim 0; the row is everything else) with gradient g:
//
//     d   = (maximize ? -g : g) + weight_decay * p
//     d   = d - mean(d over the row)
//     buf = d (first step) | momentum * buf + (1 - dampening) * d
//     d   = d + momentum * buf if nesterov else buf
//     p   = scale * p - lr * d      (scale = 1 - lr * wd for SGDW, else 1)
//
// The row is read twice, the second time from cache (the first pass also
// prefetches the buffer): the first pass only sums d, the second writes the
// new buffer and the new p. The step so streams g, p and buf from memory
// once and writes buf and p once, where the Python kernels make about
// eleven passes.
//
// Every value is rounded as mmdet_gc.functional._single_tensor_sgd_gc (the
// specification) rounds it: d, the centred d, the buffer and the update
// are stored in the parameter's dtype between steps of the formula, the
// arithmetic runs in float (double for float64), ``a + alpha * b`` is one
// fused multiply-add as in ATen's vectorized add (where the CPU has FMA),
// and, as ATen does for half-precision tensors, an ``alpha`` is rounded to
// the tensor's dtype while a multiplier of ``mul_`` is not. Only the row
// mean differs in its last bits: it is summed in double in a fixed order
// (eight interleaved partial sums), so the result does not depend on the
// number of threads either.
//
// Parameters p and buffers are updated in place; gradients are read only.
// The Python side (mmdet_gc/fused.py) only passes contiguous CPU tensors of
// one dtype per parameter and routes everything else elsewhere. The module
// defined at the end of this file also binds the Adam kernel of
// adam_gc_fused.cpp and the update-GC kernels of update_gc_fused.cpp (the
// sources make one extension).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gc_fused_common.h"

namespace {

// fmadd, OpMath, rnd, RowSum, RowTasks...: gc_fused_common.h.
using namespace mmdet_gc::fused;  // NOLINT(build/namespaces)

// What the momentum buffer does, fixed per tensor so that the row loops
// have no branches.
enum Mode : int {
  kNone = 0,    // momentum == 0
  kFirst = 1,   // first step: buf = d
  kUpdate = 2,  // buf = d + momentum * buf (dampening == 0)
  kDamped = 3,  // buf = momentum * buf + (1 - dampening) * d
};

struct Hyper {
  double weight_decay, momentum, lr, dampening, scale;
  bool nesterov, maximize;
};

// How the weight decay enters, fixed per call.
enum Decay : int {
  kNoDecay = 0,  // d = g
  kL2 = 1,       // d = g + wd * p
  kScaled = 2,   // d = g, and p is scaled first (SGDW)
};

// The hyper-parameters as the single-tensor kernel rounds them for dtype T.
//
// maximize: the kernel works with d' = g - wd * p = -d and its row mean,
// and takes c = mean' - d' = d - mean: negation is exact and rounding to
// nearest is symmetric, so every value equals the specification's, with
// no extra multiplication.
template <typename T>
struct Consts {
  using O = typename OpMath<T>::type;
  O wd;      // alpha of g.add(p, alpha=wd), negated when maximizing
  O mu;      // alpha of add(d, buf, alpha=momentum)
  O mu_mul;  // multiplier of buf.mul_(momentum)
  O damp;    // alpha of add_(d, alpha=1 - dampening)
  O neg_lr;  // alpha of p.add_(d, alpha=-lr)
  O scale;   // multiplier of p.mul_(1 - lr * wd) (SGDW)

  explicit Consts(const Hyper& h)
      : wd(alpha(h.maximize ? -h.weight_decay : h.weight_decay)),
        mu(alpha(h.momentum)),
        mu_mul(static_cast<O>(h.momentum)),
        damp(alpha(1.0 - h.dampening)),
        neg_lr(alpha(-h.lr)),
        scale(static_cast<O>(h.scale)) {}

  // ATen's add kernel converts ``alpha`` to the tensor's dtype.
  static O alpha(double a) { return static_cast<O>(static_cast<T>(a)); }
};

// d = g + wd * p (d' = -d when maximizing), as stored in dtype T.
template <typename T, bool WD>
inline typename OpMath<T>::type decayed(T g, T p, const Consts<T>& k) {
  using O = typename OpMath<T>::type;
  if (WD) {
    return rnd<T>(fmadd(static_cast<O>(p), k.wd, static_cast<O>(g)));
  }
  return static_cast<O>(g);
}

// Mean of d over one row, summed in double in a fixed order (RowSum).
// ``ahead`` (the row's momentum buffer, or null) is prefetched on the way,
// so that the second pass finds all of its inputs in cache.
template <typename T, bool WD>
inline typename OpMath<T>::type row_mean(const T* g, const T* p, int64_t n,
                                         const Consts<T>& k,
                                         const T* ahead) {
  RowSum<T> s;
  // Blocks of 512 elements: the prefetches stay out of the summing loop,
  // which the compiler vectorizes.
  constexpr int64_t kBlock = 512;
  const int64_t n8 = n - n % 8;
  for (int64_t start = 0; start < n8; start += kBlock) {
    const int64_t end = std::min(n8, start + kBlock);
    if (ahead != nullptr) {
      for (int64_t l = start; l < end; l += 64 / sizeof(T)) {
        MMDET_GC_PREFETCH(ahead + l);
      }
    }
    for (int64_t i = start; i < end; i += 8) {
      for (int j = 0; j < 8; ++j) {
        s.add(j, static_cast<double>(decayed<T, WD>(g[i + j], p[i + j], k)));
      }
    }
  }
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(decayed<T, WD>(g[i], p[i], k));
  }
  return s.mean(n);
}

// The second pass at element i: the new buffer and parameter.
template <typename T, int DECAY, bool NEG, int MODE, bool NEST>
inline void update_element(const T* MMDET_GC_RESTRICT g,
                           T* MMDET_GC_RESTRICT p, T* MMDET_GC_RESTRICT buf,
                           int64_t i, typename OpMath<T>::type mean,
                           const Consts<T>& k) {
  using O = typename OpMath<T>::type;
  const O d = decayed<T, DECAY == kL2>(g[i], p[i], k);
  const O c = rnd<T>(NEG ? mean - d : d - mean);
  O b = c;
  if (MODE == kUpdate) {
    b = rnd<T>(fmadd(static_cast<O>(buf[i]), k.mu, c));
  } else if (MODE == kDamped) {
    const O b1 = rnd<T>(static_cast<O>(buf[i]) * k.mu_mul);
    b = rnd<T>(fmadd(c, k.damp, b1));
  }
  if (MODE != kNone) {
    buf[i] = static_cast<T>(b);
  }
  const O upd = NEST ? rnd<T>(fmadd(b, k.mu, c)) : b;
  const O ps = DECAY == kScaled ? rnd<T>(static_cast<O>(p[i]) * k.scale)
                                : static_cast<O>(p[i]);
  p[i] = static_cast<T>(fmadd(upd, k.neg_lr, ps));
}

// Both passes over one row: the mean, then the new buffer and parameter.
template <typename T, int DECAY, bool NEG, int MODE, bool NEST>
inline void row_update(const T* MMDET_GC_RESTRICT g, T* MMDET_GC_RESTRICT p,
                       T* MMDET_GC_RESTRICT buf, int64_t n,
                       const Consts<T>& k) {
  using O = typename OpMath<T>::type;
  const O mean = row_mean<T, DECAY == kL2>(
      g, p, n, k, MODE == kUpdate || MODE == kDamped ? buf : nullptr);
  for (int64_t i = 0; i < n; ++i) {
    update_element<T, DECAY, NEG, MODE, NEST>(g, p, buf, i, mean, k);
  }
}

#ifdef MMDET_GC_AVX2
// row_update with AVX2 / FMA for float, float16 and bfloat16: eight
// elements at a time, in float, with exactly the scalar code's operations
// (FMA where it calls fmadd, a rounding to the dtype where it calls rnd),
// and the row sum in its order (lanes 0-3 and 4-7 of every eight elements
// are the partial sums acc[0..3] and acc[4..7]): every bit matches it.
struct VecConsts {
  __m256 wd, mu, mu_mul, damp, neg_lr, scale;
  template <typename T>
  explicit VecConsts(const Consts<T>& k)
      : wd(_mm256_set1_ps(k.wd)),
        mu(_mm256_set1_ps(k.mu)),
        mu_mul(_mm256_set1_ps(k.mu_mul)),
        damp(_mm256_set1_ps(k.damp)),
        neg_lr(_mm256_set1_ps(k.neg_lr)),
        scale(_mm256_set1_ps(k.scale)) {}
};

// d of eight elements (decayed).
template <typename T, bool WD>
inline __m256 vdecayed(const T* g, const T* p, const VecConsts& c) {
  using IO = VecIO<T>;
  if (WD) {
    return IO::rnd(_mm256_fmadd_ps(IO::load(p), c.wd, IO::load(g)));
  }
  return IO::load(g);
}

template <typename T, int DECAY, bool NEG, int MODE, bool NEST>
inline void row_update_avx2(const T* MMDET_GC_RESTRICT g,
                            T* MMDET_GC_RESTRICT p, T* MMDET_GC_RESTRICT buf,
                            int64_t n, const Consts<T>& k,
                            const VecConsts& c) {
  using IO = VecIO<T>;
  constexpr bool WD = DECAY == kL2;
  constexpr bool READ_BUF = MODE == kUpdate || MODE == kDamped;
  const int64_t n8 = n - n % 8;
  // The sum, prefetching the buffer on the way (blocks of 512 elements,
  // as row_mean).
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  constexpr int64_t kBlock = 512;
  for (int64_t start = 0; start < n8; start += kBlock) {
    const int64_t end = std::min(n8, start + kBlock);
    if (READ_BUF) {
      for (int64_t l = start; l < end; l += 64 / sizeof(T)) {
        MMDET_GC_PREFETCH(buf + l);
      }
    }
    for (int64_t i = start; i < end; i += 8) {
      vsum(vdecayed<T, WD>(g + i, p + i, c), &lo, &hi);
    }
  }
  RowSum<T> s;
  vstore_sum(lo, hi, &s);
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(decayed<T, WD>(g[i], p[i], k));
  }
  const float mean = s.mean(n);
  const __m256 vmean = _mm256_set1_ps(mean);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 d = vdecayed<T, WD>(g + i, p + i, c);
    const __m256 cd =
        IO::rnd(NEG ? _mm256_sub_ps(vmean, d) : _mm256_sub_ps(d, vmean));
    __m256 b = cd;
    if (MODE == kUpdate) {
      b = IO::rnd(_mm256_fmadd_ps(IO::load(buf + i), c.mu, cd));
    } else if (MODE == kDamped) {
      const __m256 b1 = IO::rnd(_mm256_mul_ps(IO::load(buf + i), c.mu_mul));
      b = IO::rnd(_mm256_fmadd_ps(cd, c.damp, b1));
    }
    if (MODE != kNone) {
      IO::store(buf + i, b);
    }
    const __m256 upd = NEST ? IO::rnd(_mm256_fmadd_ps(b, c.mu, cd)) : b;
    const __m256 ps = DECAY == kScaled
        ? IO::rnd(_mm256_mul_ps(IO::load(p + i), c.scale))
        : IO::load(p + i);
    IO::store(p + i, _mm256_fmadd_ps(upd, c.neg_lr, ps));
  }
  for (int64_t i = n8; i < n; ++i) {  // the tail, as row_update
    update_element<T, DECAY, NEG, MODE, NEST>(g, p, buf, i, mean, k);
  }
}
#endif  // MMDET_GC_AVX2

template <typename T, int DECAY, bool NEG, int MODE, bool NEST>
void rows_of(const T* g, T* p, T* buf, int64_t rows, int64_t n,
             const Consts<T>& k) {
#ifdef MMDET_GC_AVX2
  if constexpr (!std::is_same<T, double>::value) {
    const VecConsts c(k);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * n;
      row_update_avx2<T, DECAY, NEG, MODE, NEST>(
          g + o, p + o, buf == nullptr ? nullptr : buf + o, n, k, c);
    }
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * n;
    row_update<T, DECAY, NEG, MODE, NEST>(
        g + o, p + o, buf == nullptr ? nullptr : buf + o, n, k);
  }
}

template <typename T, int DECAY, bool NEG>
void rows_mode(const T* g, T* p, T* buf, int64_t rows, int64_t n, int mode,
               bool nesterov, const Consts<T>& k) {
  switch (mode) {
    case kNone:
      return rows_of<T, DECAY, NEG, kNone, false>(g, p, buf, rows, n, k);
    case kFirst:
      return nesterov
          ? rows_of<T, DECAY, NEG, kFirst, true>(g, p, buf, rows, n, k)
          : rows_of<T, DECAY, NEG, kFirst, false>(g, p, buf, rows, n, k);
    case kUpdate:
      return nesterov
          ? rows_of<T, DECAY, NEG, kUpdate, true>(g, p, buf, rows, n, k)
          : rows_of<T, DECAY, NEG, kUpdate, false>(g, p, buf, rows, n, k);
    default:
      return nesterov
          ? rows_of<T, DECAY, NEG, kDamped, true>(g, p, buf, rows, n, k)
          : rows_of<T, DECAY, NEG, kDamped, false>(g, p, buf, rows, n, k);
  }
}

template <typename T, int DECAY>
void rows_neg(const T* g, T* p, T* buf, int64_t rows, int64_t n, int mode,
              const Hyper& h, const Consts<T>& k) {
  if (h.maximize) {
    rows_mode<T, DECAY, true>(g, p, buf, rows, n, mode, h.nesterov, k);
  } else {
    rows_mode<T, DECAY, false>(g, p, buf, rows, n, mode, h.nesterov, k);
  }
}

// Rows [r0, r1) of one tensor.
template <typename T>
void rows(const at::Tensor& grad, const at::Tensor& param,
          const at::Tensor& buf, int64_t r0, int64_t r1, int64_t n, int mode,
          const Hyper& h) {
  const Consts<T> k(h);
  const T* g = grad.const_data_ptr<T>() + r0 * n;
  T* p = param.data_ptr<T>() + r0 * n;
  T* b = buf.defined() ? buf.data_ptr<T>() + r0 * n : nullptr;
  if (h.weight_decay != 0.) {
    rows_neg<T, kL2>(g, p, b, r1 - r0, n, mode, h, k);
  } else if (h.scale != 1.) {
    rows_neg<T, kScaled>(g, p, b, r1 - r0, n, mode, h, k);
  } else {
    rows_neg<T, kNoDecay>(g, p, b, r1 - r0, n, mode, h, k);
  }
}

// About this many elements per task (RowTasks).
constexpr int64_t kTaskElems = 1 << 15;

}  // namespace

// Update ``params`` in place; returns the momentum buffers (new tensors
// where ``momentum_buffers`` held None), or an empty list without
// momentum.
std::vector<at::Tensor> sgd_gc_(
    const std::vector<at::Tensor>& params,
    const std::vector<at::Tensor>& grads,
    const std::vector<c10::optional<at::Tensor>>& momentum_buffers,
    double weight_decay, double momentum, double lr, double dampening,
    bool nesterov, bool maximize, double scale) {
  const size_t num = params.size();
  TORCH_CHECK(grads.size() == num, "sgd_gc_: ", num, " params but ",
              grads.size(), " grads");
  TORCH_CHECK(momentum == 0. || momentum_buffers.size() == num,
              "sgd_gc_: one momentum buffer (or None) per param expected");
  TORCH_CHECK(weight_decay == 0. || scale == 1.,
              "sgd_gc_: an L2 weight_decay or a decoupled scale, not both");
  const Hyper h{weight_decay, momentum, lr, dampening, scale, nesterov,
                maximize};
  std::vector<at::Tensor> bufs;
  std::vector<int> modes(num, kNone);
  RowTasks tasks(kTaskElems);
  for (size_t t = 0; t < num; ++t) {
    const at::Tensor& p = params[t];
    const at::Tensor& g = grads[t];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(),
                "sgd_gc_: CPU tensors only");
    TORCH_CHECK(p.dim() >= 1 && reads_as_values(p) && reads_as_values(g) &&
                    g.sizes() == p.sizes() && g.scalar_type() ==
                    p.scalar_type(),
                "sgd_gc_: param ", t, " and its grad must be contiguous "
                "tensors of one shape and dtype, without the negative or "
                "conjugate bit");
    const auto dtype = p.scalar_type();
    TORCH_CHECK(supported_dtype(dtype), "sgd_gc_: unsupported dtype ",
                dtype);
    if (momentum != 0.) {
      const auto& given = momentum_buffers[t];
      if (given.has_value() && given->defined()) {
        TORCH_CHECK(reads_as_values(*given) && given->sizes() == p.sizes() &&
                        given->scalar_type() == p.scalar_type() &&
                        given->device().is_cpu(),
                    "sgd_gc_: momentum buffer ", t,
                    " must be a contiguous tensor like its param, without "
                    "the negative or conjugate bit");
        bufs.push_back(*given);
        modes[t] = dampening != 0. ? kDamped : kUpdate;
      } else {
        bufs.push_back(at::empty_like(p, at::MemoryFormat::Contiguous));
        modes[t] = kFirst;
      }
    }
    tasks.add(static_cast<int64_t>(t), p);
  }
  const at::Tensor none;
  tasks.run([&](const RowTask& task) {
    const int64_t t = task.tensor;
    const at::Tensor& p = params[t];
    const int64_t n = p.numel() / p.size(0);
    const at::Tensor& b = momentum != 0. ? bufs[t] : none;
    dispatch_dtype(p.scalar_type(), "sgd_gc_", [&](auto tag) {
      using T = typename decltype(tag)::type;
      rows<T>(grads[t], p, b, task.r0, task.r1, n, modes[t], h);
    });
  });
  // In-place updates, as ATen's in-place ops record them for autograd.
  for (size_t t = 0; t < num; ++t) {
    bump_version(params[t]);
    if (momentum != 0. && modes[t] != kFirst) {
      bump_version(bufs[t]);
    }
  }
  return bufs;
}

// Adam / AdamW with GC, in adam_gc_fused.cpp (one extension, one module).
void adam_gc_(const std::vector<at::Tensor>& params,
              const std::vector<at::Tensor>& grads,
              const std::vector<at::Tensor>& exp_avgs,
              const std::vector<at::Tensor>& exp_avg_sqs,
              const std::vector<at::Tensor>& max_exp_avg_sqs,
              const std::vector<at::Tensor>& state_steps, bool on_update,
              bool decoupled, bool amsgrad, double beta1, double beta2,
              double lr, double weight_decay, double eps, bool maximize);

// GC on the update of any optimizer, in update_gc_fused.cpp.
std::vector<at::Tensor> row_means(const std::vector<at::Tensor>& params);
void restore_row_means_(const std::vector<at::Tensor>& params,
                        const std::vector<at::Tensor>& before);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The GIL is released while the kernel runs, as ATen's ops do.
  m.def("sgd_gc_", &sgd_gc_,
        "SGD with Gradient Centralization over centralized CPU tensors "
        "(in place)",
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        pybind11::arg("params"), pybind11::arg("grads"),
        pybind11::arg("momentum_buffers"), pybind11::arg("weight_decay"),
        pybind11::arg("momentum"), pybind11::arg("lr"),
        pybind11::arg("dampening"), pybind11::arg("nesterov"),
        pybind11::arg("maximize"), pybind11::arg("scale"));
  m.def("row_means", &row_means,
        "The mean of every row of each param (float; double for float64)",
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        pybind11::arg("params"));
  m.def("restore_row_means_", &restore_row_means_,
        "p -= row_mean(p) - before, per row of each param (in place)",
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        pybind11::arg("params"), pybind11::arg("before"));
  // Checks of a step's tensors, in one call (gc_fused_common.h).
  m.def("fused_takes", &fused_takes,
        "Per param: whether a fused kernel may take it with its tensors "
        "in others",
        pybind11::arg("params"), pybind11::arg("others"));
  m.def("shares_written_memory", &shares_written_memory,
        "Whether a written tensor overlaps another tensor's memory",
        pybind11::arg("written"), pybind11::arg("read"));
  m.def("adam_gc_", &adam_gc_,
        "Adam / AdamW with Gradient Centralization over centralized CPU "
        "tensors (in place, step counts included)",
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        pybind11::arg("params"), pybind11::arg("grads"),
        pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"),
        pybind11::arg("max_exp_avg_sqs"), pybind11::arg("state_steps"),
        pybind11::arg("on_update"), pybind11::arg("decoupled"),
        pybind11::arg("amsgrad"), pybind11::arg("beta1"),
        pybind11::arg("beta2"), pybind11::arg("lr"),
        pybind11::arg("weight_decay"), pybind11::arg("eps"),
        pybind11::arg("maximize"));
}
