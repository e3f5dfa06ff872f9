// Fused CPU kernel of Adam / AdamW with Gradient Centralization (GC).
//
// Yong et al., "Gradient Centralization: A New Optimization Technique for
// Deep Neural Networks", ECCV 2020 (arXiv:2004.01461).
//
// One call updates a list of centralized parameters, each with its own
// step count. For each output row of a parameter p (dim 0; the row is
// everything else) with gradient g, d = (maximize ? -g : g) (+ wd * p for
// Adam's L2 penalty) and, with torch.optim.Adam's moments m, v (and vmax):
//
//   GC on the update (Adam_GC2, AdamW_GC2...):
//     m = lerp(m, d, 1 - beta1); v = beta2 * v + (1 - beta2) * d * d
//     delta = m / (sqrt(v) / sqrt(bc2) + eps) * (lr / bc1)
//     delta += lr * wd * p                       (AdamW only)
//     p -= delta - mean(delta over the row)
//   GC on the gradient (Adam_GC, AdamW_GC...):
//     c = d - mean(d over the row)
//     p *= 1 - lr * wd                           (AdamW only)
//     torch's Adam step on p with the gradient c
//
// Memory sees each tensor about once. On the update, the first pass over a
// row reads g, p, m, v, writes the new moments, keeps delta in a row-sized
// scratch buffer and sums it; the second writes p from the scratch and the
// cached row of p. On the gradient, the first pass sums d (and prefetches
// the moments), the second, from cache, does the rest.
//
// Every value is rounded as mmdet_gc.functional's single-tensor kernels
// (the specification: _single_tensor_adam_gc2 and torch's single-tensor
// Adam) round it: each intermediate tensor of the specification is stored
// in the parameter's dtype, its arithmetic runs in float (double for
// float64), ``lerp`` is one fused multiply-add as in ATen's vectorized
// kernel, ``addcmul`` / ``addcdiv`` are not, an ``alpha`` of ``add`` is
// rounded to the tensor's dtype and the scalar of ``mul`` / ``div`` /
// ``lerp`` / ``addcmul`` / ``addcdiv`` to float (double for float64). Only
// the row mean differs in its last bits: it is summed in double in a fixed
// order (eight interleaved partial sums), so the result does not depend on
// the number of threads either.
//
// float32, float16 and bfloat16 rows, where the compiler targets AVX2, FMA
// and F16C (fused.py passes -mavx2 -mfma -mf16c on such CPUs), take an
// AVX2 path with the flags as template arguments (no branch in the loops):
// eight elements at a time with the same operations as the scalar code
// (SIMD sqrt and division are correctly rounded, FMA exactly where the
// scalar code calls std::fma, the same roundings to the dtype) and the same
// eight partial sums in double, so its results are bit for bit the scalar
// kernel's (NaNs aside, whose sign and payload may differ). float64 rows,
// and builds without AVX2, run the scalar code.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gc_fused_common.h"


namespace {

// fmadd, OpMath, rnd, RowSum, RowTasks...: gc_fused_common.h.
using namespace mmdet_gc::fused;  // NOLINT(build/namespaces)

// The scalars of one tensor's step, as the specification rounds them.
template <typename T>
struct AdamConsts {
  using O = typename OpMath<T>::type;
  bool l2, neg, amsgrad, on_update, decay;
  O l2_alpha;     // alpha of g.add(p, alpha=wd) (Adam's L2)
  O w1;           // lerp weight 1 - beta1
  bool w1_small;  // ATen's lerp: which end it starts from
  O beta2;        // multiplier of v.mul_(beta2)
  O c2;           // value of addcmul_(d, d, value=1 - beta2)
  O bc2_sqrt;     // divisor of sqrt(v) / sqrt(bc2)
  O eps;          // added by add_(eps)
  O step_size;    // multiplier of delta.mul_(lr / bc1) (on the update)
  O decay_alpha;  // alpha of delta.add_(p, alpha=lr * wd) (on the update)
  O scale;        // multiplier of p.mul_(1 - lr * wd) (on the gradient)
  O neg_step;     // value of p.addcdiv_(m, denom, value=-lr / bc1)

  static O alpha(double a) { return static_cast<O>(static_cast<T>(a)); }
};

struct AdamHyper {
  bool on_update, decoupled, amsgrad, maximize;
  double beta1, beta2, lr, weight_decay, eps;
};

template <typename T>
AdamConsts<T> consts_for(const AdamHyper& h, double step) {
  using O = typename OpMath<T>::type;
  AdamConsts<T> k;
  const bool wd = h.weight_decay != 0.;
  k.l2 = wd && !h.decoupled;
  k.neg = h.maximize;
  k.amsgrad = h.amsgrad;
  k.on_update = h.on_update;
  k.decay = wd && h.decoupled;
  k.l2_alpha = AdamConsts<T>::alpha(h.weight_decay);
  const double w1 = 1. - h.beta1;
  k.w1 = static_cast<O>(w1);
  k.w1_small = std::abs(k.w1) < O(0.5);
  k.beta2 = static_cast<O>(h.beta2);
  k.c2 = static_cast<O>(1. - h.beta2);
  // Python: 1 - beta1 ** step, (1 - beta2 ** step) ** 0.5
  const double bc1 = 1. - std::pow(h.beta1, step);
  k.bc2_sqrt = static_cast<O>(std::pow(1. - std::pow(h.beta2, step), 0.5));
  k.eps = static_cast<O>(h.eps);
  const double step_size = h.lr / bc1;
  k.step_size = static_cast<O>(step_size);
  k.neg_step = static_cast<O>(-step_size);
  k.decay_alpha = AdamConsts<T>::alpha(h.lr * h.weight_decay);
  k.scale = static_cast<O>(1. - h.lr * h.weight_decay);
  return k;
}

// (-)g (+ wd * p), as stored in dtype T.
template <typename T>
inline typename OpMath<T>::type decayed(T g, T p, const AdamConsts<T>& k) {
  using O = typename OpMath<T>::type;
  const O gv = k.neg ? -static_cast<O>(g) : static_cast<O>(g);
  return k.l2 ? rnd<T>(fmadd(static_cast<O>(p), k.l2_alpha, gv)) : gv;
}

// Moments of one element, written back; returns the denominator
// (sqrt(v) / sqrt(bc2) + eps) as stored in dtype T, and the new m in *m1.
template <typename T>
inline typename OpMath<T>::type moments(typename OpMath<T>::type d, T* m,
                                        T* v, T* vmax,
                                        const AdamConsts<T>& k,
                                        typename OpMath<T>::type* m1) {
  using O = typename OpMath<T>::type;
  const O m0 = static_cast<O>(*m);
  const O mn = k.w1_small ? rnd<T>(fmadd(k.w1, d - m0, m0))
                          : rnd<T>(fmadd(k.w1 - O(1), d - m0, d));
  *m = static_cast<T>(mn);
  const O vs = rnd<T>(static_cast<O>(*v) * k.beta2);
  O vn = rnd<T>(vs + (k.c2 * d) * d);
  *v = static_cast<T>(vn);
  if (k.amsgrad) {
    const O a = static_cast<O>(*vmax);
    // torch.maximum: NaN wins.
    vn = (a > vn || a != a) ? a : vn;
    *vmax = static_cast<T>(vn);
  }
  *m1 = mn;
  return rnd<T>(rnd<T>(rnd<T>(std::sqrt(vn)) / k.bc2_sqrt) + k.eps);
}

// GC on the update: one row.
template <typename T>
void row_on_update(const T* g, T* p, T* m, T* v, T* vmax,
                   typename OpMath<T>::type* delta, int64_t n,
                   const AdamConsts<T>& k) {
  using O = typename OpMath<T>::type;
  RowSum<T> s;
  auto one = [&](int64_t i) -> O {
    const O d = decayed<T>(g[i], p[i], k);
    O m1;
    const O den =
        moments<T>(d, m + i, v + i, vmax == nullptr ? nullptr : vmax + i, k,
                   &m1);
    O dl = rnd<T>(rnd<T>(m1 / den) * k.step_size);
    if (k.decay) {
      dl = rnd<T>(fmadd(static_cast<O>(p[i]), k.decay_alpha, dl));
    }
    delta[i] = dl;
    return dl;
  };
  const int64_t n8 = n - n % 8;
  for (int64_t i = 0; i < n8; i += 8) {
    for (int j = 0; j < 8; ++j) {
      s.add(j, static_cast<double>(one(i + j)));
    }
  }
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(one(i));
  }
  const O mean = s.mean(n);
  for (int64_t i = 0; i < n; ++i) {
    const O c = rnd<T>(delta[i] - mean);
    p[i] = static_cast<T>(static_cast<O>(p[i]) - c);
  }
}

// GC on the gradient: one row.
template <typename T>
void row_on_grad(const T* g, T* p, T* m, T* v, T* vmax, int64_t n,
                 const AdamConsts<T>& k) {
  using O = typename OpMath<T>::type;
  RowSum<T> s;
  // The moments are prefetched on the way, so that the second pass finds
  // all of its inputs in cache.
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t n8 = n - n % 8;
  for (int64_t i = 0; i < n8; i += 8) {
    if (i % kLine == 0) {
      MMDET_GC_PREFETCH(m + i);
      MMDET_GC_PREFETCH(v + i);
      if (vmax != nullptr) {
        MMDET_GC_PREFETCH(vmax + i);
      }
    }
    for (int j = 0; j < 8; ++j) {
      s.add(j, static_cast<double>(decayed<T>(g[i + j], p[i + j], k)));
    }
  }
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(decayed<T>(g[i], p[i], k));
  }
  const O mean = s.mean(n);
  for (int64_t i = 0; i < n; ++i) {
    const O c = rnd<T>(decayed<T>(g[i], p[i], k) - mean);
    O m1;
    const O den = moments<T>(c, m + i, v + i,
                             vmax == nullptr ? nullptr : vmax + i, k, &m1);
    O pv = static_cast<O>(p[i]);
    if (k.decay) {
      pv = rnd<T>(pv * k.scale);
    }
    p[i] = static_cast<T>(pv + (k.neg_step * m1) / den);
  }
}

#ifdef MMDET_GC_AVX2
// Rows with AVX2 / FMA: eight elements at a time, in float, with exactly
// the scalar code's operations (sqrt and division are correctly rounded in
// SIMD too, FMA where the scalar code calls std::fma, every rounding to the
// tensor's dtype where it calls rnd), so every bit matches it. The row sum
// keeps the scalar order: lanes 0-3 and 4-7 of each eight elements are the
// partial sums acc[0..3] and acc[4..7] in double. The flags are template
// arguments: the loops carry no branches.

struct VecConsts {
  __m256 l2_alpha, w1, w1m1, beta2, c2, bc2_sqrt, eps, step_size,
      decay_alpha, scale, neg_step, sign;
  template <typename T>
  explicit VecConsts(const AdamConsts<T>& k)
      : l2_alpha(_mm256_set1_ps(k.l2_alpha)),
        w1(_mm256_set1_ps(k.w1)),
        w1m1(_mm256_set1_ps(k.w1 - 1.f)),
        beta2(_mm256_set1_ps(k.beta2)),
        c2(_mm256_set1_ps(k.c2)),
        bc2_sqrt(_mm256_set1_ps(k.bc2_sqrt)),
        eps(_mm256_set1_ps(k.eps)),
        step_size(_mm256_set1_ps(k.step_size)),
        decay_alpha(_mm256_set1_ps(k.decay_alpha)),
        scale(_mm256_set1_ps(k.scale)),
        neg_step(_mm256_set1_ps(k.neg_step)),
        sign(_mm256_set1_ps(-0.f)) {}
};

// (-)g (+ wd * p) of eight elements, as stored in dtype T.
template <typename T, bool L2, bool NEG>
inline __m256 vdecayed(const T* g, const T* p, const VecConsts& c) {
  using IO = VecIO<T>;
  __m256 d = IO::load(g);
  if (NEG) {
    d = _mm256_xor_ps(d, c.sign);
  }
  if (L2) {
    d = IO::rnd(_mm256_fmadd_ps(IO::load(p), c.l2_alpha, d));
  }
  return d;
}

// Moments of eight elements, written back; returns the denominator and
// the new m in *m1.
template <typename T, bool AMS, bool W1_SMALL>
inline __m256 vmoments(__m256 d, T* m, T* v, T* vmax, const VecConsts& c,
                       __m256* m1) {
  using IO = VecIO<T>;
  const __m256 m0 = IO::load(m);
  const __m256 diff = _mm256_sub_ps(d, m0);
  const __m256 mn = IO::rnd(W1_SMALL ? _mm256_fmadd_ps(c.w1, diff, m0)
                                     : _mm256_fmadd_ps(c.w1m1, diff, d));
  IO::store(m, mn);
  const __m256 vs = IO::rnd(_mm256_mul_ps(IO::load(v), c.beta2));
  __m256 vn = IO::rnd(
      _mm256_add_ps(vs, _mm256_mul_ps(_mm256_mul_ps(c.c2, d), d)));
  IO::store(v, vn);
  if (AMS) {
    const __m256 a = IO::load(vmax);
    // torch.maximum: NaN wins.
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(a, vn, _CMP_GT_OQ),
                                     _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    vn = _mm256_blendv_ps(vn, a, take);
    IO::store(vmax, vn);
  }
  *m1 = mn;
  const __m256 root = IO::rnd(_mm256_sqrt_ps(vn));
  return IO::rnd(
      _mm256_add_ps(IO::rnd(_mm256_div_ps(root, c.bc2_sqrt)), c.eps));
}

template <typename T, bool L2, bool NEG, bool AMS, bool DECAY, bool W1_SMALL>
void row_on_update_avx2(const T* g, T* p, T* m, T* v, T* vmax, float* delta,
                        int64_t n, const AdamConsts<T>& k,
                        const VecConsts& c) {
  using IO = VecIO<T>;
  const int64_t n8 = n - n % 8;
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 d = vdecayed<T, L2, NEG>(g + i, p + i, c);
    __m256 m1;
    const __m256 den = vmoments<T, AMS, W1_SMALL>(
        d, m + i, v + i, AMS ? vmax + i : nullptr, c, &m1);
    __m256 dl =
        IO::rnd(_mm256_mul_ps(IO::rnd(_mm256_div_ps(m1, den)), c.step_size));
    if (DECAY) {
      dl = IO::rnd(_mm256_fmadd_ps(IO::load(p + i), c.decay_alpha, dl));
    }
    _mm256_storeu_ps(delta + i, dl);
    vsum(dl, &lo, &hi);
  }
  RowSum<T> s;
  vstore_sum(lo, hi, &s);
  for (int64_t i = n8; i < n; ++i) {
    const float d = decayed<T>(g[i], p[i], k);
    float m1;
    const float den =
        moments<T>(d, m + i, v + i, AMS ? vmax + i : nullptr, k, &m1);
    float dl = rnd<T>(rnd<T>(m1 / den) * k.step_size);
    if (DECAY) {
      dl = rnd<T>(fmadd(static_cast<float>(p[i]), k.decay_alpha, dl));
    }
    delta[i] = dl;
    s.tail += static_cast<double>(dl);
  }
  const float mean = s.mean(n);
  const __m256 vmean = _mm256_set1_ps(mean);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 cd =
        IO::rnd(_mm256_sub_ps(_mm256_loadu_ps(delta + i), vmean));
    IO::store(p + i, _mm256_sub_ps(IO::load(p + i), cd));
  }
  for (int64_t i = n8; i < n; ++i) {
    const float cd = rnd<T>(delta[i] - mean);
    p[i] = static_cast<T>(static_cast<float>(p[i]) - cd);
  }
}

template <typename T, bool L2, bool NEG, bool AMS, bool DECAY, bool W1_SMALL>
void row_on_grad_avx2(const T* g, T* p, T* m, T* v, T* vmax, int64_t n,
                      const AdamConsts<T>& k, const VecConsts& c) {
  using IO = VecIO<T>;
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t n8 = n - n % 8;
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (int64_t i = 0; i < n8; i += 8) {
    if (i % kLine == 0) {
      MMDET_GC_PREFETCH(m + i);
      MMDET_GC_PREFETCH(v + i);
      if (AMS) {
        MMDET_GC_PREFETCH(vmax + i);
      }
    }
    vsum(vdecayed<T, L2, NEG>(g + i, p + i, c), &lo, &hi);
  }
  RowSum<T> s;
  vstore_sum(lo, hi, &s);
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(decayed<T>(g[i], p[i], k));
  }
  const float mean = s.mean(n);
  const __m256 vmean = _mm256_set1_ps(mean);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 cd =
        IO::rnd(_mm256_sub_ps(vdecayed<T, L2, NEG>(g + i, p + i, c), vmean));
    __m256 m1;
    const __m256 den = vmoments<T, AMS, W1_SMALL>(
        cd, m + i, v + i, AMS ? vmax + i : nullptr, c, &m1);
    __m256 pv = IO::load(p + i);
    if (DECAY) {
      pv = IO::rnd(_mm256_mul_ps(pv, c.scale));
    }
    IO::store(
        p + i,
        _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(c.neg_step, m1), den)));
  }
  for (int64_t i = n8; i < n; ++i) {
    const float cd = rnd<T>(decayed<T>(g[i], p[i], k) - mean);
    float m1;
    const float den =
        moments<T>(cd, m + i, v + i, AMS ? vmax + i : nullptr, k, &m1);
    float pv = static_cast<float>(p[i]);
    if (DECAY) {
      pv = rnd<T>(pv * k.scale);
    }
    p[i] = static_cast<T>(pv + (k.neg_step * m1) / den);
  }
}

template <typename T, bool L2, bool NEG, bool AMS, bool DECAY, bool W1_SMALL>
void rows_avx2(const T* g, T* p, T* m, T* v, T* vmax, int64_t rows,
               int64_t n, bool on_update, const AdamConsts<T>& k) {
  const VecConsts c(k);
  std::vector<float> delta(on_update ? n : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ro = r * n;
    T* vm = AMS ? vmax + ro : nullptr;
    if (on_update) {
      row_on_update_avx2<T, L2, NEG, AMS, DECAY, W1_SMALL>(
          g + ro, p + ro, m + ro, v + ro, vm, delta.data(), n, k, c);
    } else {
      row_on_grad_avx2<T, L2, NEG, AMS, DECAY, W1_SMALL>(
          g + ro, p + ro, m + ro, v + ro, vm, n, k, c);
    }
  }
}

// Picks the instance of rows_avx2 for the five flags.
template <typename T, bool... B>
struct Dispatch {
  static void run(const bool* flags, const T* g, T* p, T* m, T* v, T* vmax,
                  int64_t rows, int64_t n, bool on_update,
                  const AdamConsts<T>& k) {
    if constexpr (sizeof...(B) == 5) {
      rows_avx2<T, B...>(g, p, m, v, vmax, rows, n, on_update, k);
    } else {
      if (flags[0]) {
        Dispatch<T, B..., true>::run(flags + 1, g, p, m, v, vmax, rows, n,
                                     on_update, k);
      } else {
        Dispatch<T, B..., false>::run(flags + 1, g, p, m, v, vmax, rows, n,
                                      on_update, k);
      }
    }
  }
};
#endif  // MMDET_GC_AVX2

template <typename T>
void adam_rows(const at::Tensor& grad, const at::Tensor& param,
               const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
               const at::Tensor& max_sq, int64_t r0, int64_t r1, int64_t n,
               const AdamHyper& h, double step) {
  using O = typename OpMath<T>::type;
  const AdamConsts<T> k = consts_for<T>(h, step);
  const int64_t o = r0 * n;
  const T* g = grad.const_data_ptr<T>() + o;
  T* p = param.data_ptr<T>() + o;
  T* m = exp_avg.data_ptr<T>() + o;
  T* v = exp_avg_sq.data_ptr<T>() + o;
  T* vmax = max_sq.defined() ? max_sq.data_ptr<T>() + o : nullptr;
#ifdef MMDET_GC_AVX2
  if constexpr (!std::is_same<T, double>::value) {
    const bool flags[5] = {k.l2, k.neg, k.amsgrad, k.decay, k.w1_small};
    Dispatch<T>::run(flags, g, p, m, v, vmax, r1 - r0, n, h.on_update, k);
    return;
  }
#endif
  std::vector<O> delta(h.on_update ? n : 0);
  for (int64_t r = 0; r < r1 - r0; ++r) {
    const int64_t ro = r * n;
    T* vm = vmax == nullptr ? nullptr : vmax + ro;
    if (h.on_update) {
      row_on_update<T>(g + ro, p + ro, m + ro, v + ro, vm, delta.data(), n,
                       k);
    } else {
      row_on_grad<T>(g + ro, p + ro, m + ro, v + ro, vm, n, k);
    }
  }
}

// About this many elements per task (RowTasks).
constexpr int64_t kAdamTaskElems = 1 << 14;

bool like(const at::Tensor& t, const at::Tensor& p) {
  return t.defined() && t.device().is_cpu() && reads_as_values(t) &&
      t.sizes() == p.sizes() && t.scalar_type() == p.scalar_type();
}

// Refuses a step tensor next_step cannot update in place.
void check_step(const at::Tensor& step) {
  TORCH_CHECK(step.device().is_cpu() && step.numel() == 1 &&
                  reads_as_values(step) &&
                  (step.scalar_type() == at::kFloat ||
                   step.scalar_type() == at::kDouble),
              "adam_gc_: step tensors must be 1-element float CPU tensors "
              "without the negative bit");
}

// Adds 1 to a step tensor (in its dtype, as ``step += 1``; checked by
// check_step); returns it.
double next_step(const at::Tensor& step) {
  double value;
  if (step.scalar_type() == at::kFloat) {
    float* s = step.data_ptr<float>();
    *s = *s + 1.f;
    value = *s;
  } else {
    double* s = step.data_ptr<double>();
    *s = *s + 1.;
    value = *s;
  }
  bump_version(step);
  return value;
}

}  // namespace

// Update ``params``, their moments and step counts in place.
void adam_gc_(const std::vector<at::Tensor>& params,
              const std::vector<at::Tensor>& grads,
              const std::vector<at::Tensor>& exp_avgs,
              const std::vector<at::Tensor>& exp_avg_sqs,
              const std::vector<at::Tensor>& max_exp_avg_sqs,
              const std::vector<at::Tensor>& state_steps, bool on_update,
              bool decoupled, bool amsgrad, double beta1, double beta2,
              double lr, double weight_decay, double eps, bool maximize) {
  const size_t num = params.size();
  TORCH_CHECK(grads.size() == num && exp_avgs.size() == num &&
                  exp_avg_sqs.size() == num && state_steps.size() == num &&
                  max_exp_avg_sqs.size() == (amsgrad ? num : 0),
              "adam_gc_: one grad, exp_avg, exp_avg_sq, step (and "
              "max_exp_avg_sq with amsgrad) per param expected");
  const AdamHyper h{on_update, decoupled, amsgrad, maximize, beta1,
                    beta2,     lr,        weight_decay, eps};
  for (size_t t = 0; t < num; ++t) {
    const at::Tensor& p = params[t];
    const auto dtype = p.scalar_type();
    TORCH_CHECK(supported_dtype(dtype), "adam_gc_: unsupported dtype ",
                dtype);
    TORCH_CHECK(p.dim() >= 1 && p.device().is_cpu() && reads_as_values(p) &&
                    like(grads[t], p) && like(exp_avgs[t], p) &&
                    like(exp_avg_sqs[t], p) &&
                    (!amsgrad || like(max_exp_avg_sqs[t], p)),
                "adam_gc_: param ", t, ", its grad and its state must be "
                "contiguous CPU tensors of one shape and dtype, without the "
                "negative or conjugate bit");
    // Before any step count moves.
    check_step(state_steps[t]);
  }
  std::vector<double> steps(num);
  RowTasks tasks(kAdamTaskElems);
  for (size_t t = 0; t < num; ++t) {
    steps[t] = next_step(state_steps[t]);
    tasks.add(static_cast<int64_t>(t), params[t]);
  }
  const at::Tensor none;
  tasks.run([&](const RowTask& task) {
    const int64_t t = task.tensor;
    const at::Tensor& p = params[t];
    const int64_t n = p.numel() / p.size(0);
    const at::Tensor& mx = amsgrad ? max_exp_avg_sqs[t] : none;
    dispatch_dtype(p.scalar_type(), "adam_gc_", [&](auto tag) {
      using T = typename decltype(tag)::type;
      adam_rows<T>(grads[t], p, exp_avgs[t], exp_avg_sqs[t], mx, task.r0,
                   task.r1, n, h, steps[t]);
    });
  });
  for (size_t t = 0; t < num; ++t) {
    bump_version(params[t]);
    bump_version(exp_avgs[t]);
    bump_version(exp_avg_sqs[t]);
    if (amsgrad) {
      bump_version(max_exp_avg_sqs[t]);
    }
  }
}
