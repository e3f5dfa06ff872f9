// What the fused CPU kernels of SGD and Adam with Gradient Centralization
// (sgd_gc_fused.cpp, adam_gc_fused.cpp: one extension) share: the
// arithmetic helpers that round as the specification does, the row mean
// summed in a fixed order, and the split of the rows of all tensors into
// tasks whose results do not depend on the thread count.
//
// Yong et al., "Gradient Centralization: A New Optimization Technique for
// Deep Neural Networks", ECCV 2020 (arXiv:2004.01461).
//
// Rounding conventions (those of mmdet_gc.functional's single-tensor
// kernels, the specification): every intermediate tensor of the
// specification is stored in the parameter's dtype (rnd), its arithmetic
// runs in float (double for float64: OpMath), and ``a + alpha * b`` is one
// fused multiply-add where ATen's vectorized kernels compute it so
// (fmadd). Only the row mean differs in its last bits: it is summed in
// double in a fixed order (eight interleaved partial sums: RowSum), so the
// result does not depend on the number of threads either.
//
// fused.py hashes this header with the sources (a change rebuilds the
// extension) and passes its folder as an include path.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
// Rows of float, float16 and bfloat16 run eight lanes at a time.
#define MMDET_GC_AVX2 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MMDET_GC_RESTRICT __restrict__
#define MMDET_GC_PREFETCH(ptr) __builtin_prefetch((ptr), 1, 3)
#else
#define MMDET_GC_RESTRICT __restrict
#define MMDET_GC_PREFETCH(ptr) ((void)(ptr))
#endif

namespace mmdet_gc {
namespace fused {

// ``a * b + c`` rounded once where the CPU has FMA (as ATen's vectorized
// kernels compute it), twice otherwise (as ATen's scalar kernels do).
template <typename O>
inline O fmadd(O a, O b, O c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// The dtype ATen computes in for tensors of dtype T.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// The value of ``x`` once stored in a tensor of dtype T, read back.
template <typename T, typename O>
inline O rnd(O x) {
  return static_cast<O>(static_cast<T>(x));
}

// Sum in double in a fixed order: eight interleaved partial sums (element
// i goes to acc[i % 8], the elements after the last multiple of eight to
// tail), with the rounding error of every addition carried along (Knuth's
// TwoSum) for float64 rows; a plain double sum of float values is already
// far below float's precision.
template <typename T>
struct RowSum {
  double acc[8] = {0., 0., 0., 0., 0., 0., 0., 0.};
  double err[8] = {0., 0., 0., 0., 0., 0., 0., 0.};
  double tail = 0.;

  inline void add(int j, double x) {
    if (std::is_same<T, double>::value) {
      const double s = acc[j] + x;
      const double bv = s - acc[j];
      err[j] += (acc[j] - (s - bv)) + (x - bv);
      acc[j] = s;
    } else {
      acc[j] += x;
    }
  }

  // torch: sum in the accumulation dtype, then divide by the count.
  typename OpMath<T>::type mean(int64_t n) const {
    using O = typename OpMath<T>::type;
    const double sum = (((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                        ((acc[4] + acc[5]) + (acc[6] + acc[7]))) +
        ((((err[0] + err[1]) + (err[2] + err[3])) +
          ((err[4] + err[5]) + (err[6] + err[7]))) +
         tail);
    return static_cast<O>(sum) / static_cast<O>(n);
  }
};

// Whether the kernels may read the memory of ``t`` as its values: in
// row-major order, and without the negative or conjugate bit, which only
// ATen's ops apply. fused.py sends any other tensor to the specification;
// this guards direct calls.
inline bool reads_as_values(const at::Tensor& t) {
  return t.layout() == at::kStrided && t.is_contiguous() && !t.is_neg() &&
      !t.is_conj();
}

// Whether a fused kernel may take params[i] with others[j][i] for every
// list j: each reads as values and has the dtype, sizes and device of the
// parameter (None or undefined: made by the kernel). fused.py calls this
// once per step for all tensors (a Python loop costs microseconds per
// tensor, a visible share of a fused step).
inline std::vector<bool> fused_takes(
    const std::vector<at::Tensor>& params,
    const std::vector<std::vector<c10::optional<at::Tensor>>>& others) {
  std::vector<bool> out(params.size());
  for (const auto& list : others) {
    TORCH_CHECK(list.size() == params.size(), "fused_takes: ",
                params.size(), " params but a list of ", list.size());
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    // An inference tensor is never updated in place outside inference
    // mode: the specification raises as torch does.
    bool ok = p.defined() && reads_as_values(p) && !p.is_inference();
    for (size_t j = 0; ok && j < others.size(); ++j) {
      const auto& t = others[j][i];
      if (t.has_value() && t->defined()) {
        ok = reads_as_values(*t) && !t->is_inference() &&
            t->scalar_type() == p.scalar_type() && t->sizes() == p.sizes() &&
            t->device() == p.device();
      }
    }
    out[i] = ok;
  }
  return out;
}

// Whether a tensor of ``written`` overlaps the memory of any other tensor
// of ``written`` or ``read`` (None, undefined, empty and non-strided
// tensors do not count). A contiguous tensor spans exactly its bytes, any
// other its whole storage. See fused.py's shares_written_memory.
inline bool shares_written_memory(
    const std::vector<c10::optional<at::Tensor>>& written,
    const std::vector<c10::optional<at::Tensor>>& read) {
  struct Span {
    uintptr_t start, end;
    bool written;
    bool operator<(const Span& o) const {
      return start != o.start ? start < o.start : end < o.end;
    }
  };
  std::vector<Span> spans;
  spans.reserve(written.size() + read.size());
  for (const auto* list : {&written, &read}) {
    for (const auto& t : *list) {
      if (!t.has_value() || !t->defined() ||
          t->layout() != at::kStrided || t->numel() == 0) {
        continue;
      }
      uintptr_t start, end;
      if (t->is_contiguous()) {
        start = reinterpret_cast<uintptr_t>(t->const_data_ptr());
        end = start + t->numel() * t->element_size();
      } else {
        const auto& storage = t->storage();
        start = reinterpret_cast<uintptr_t>(storage.data());
        end = start + storage.nbytes();
      }
      spans.push_back({start, end, list == &written});
    }
  }
  std::sort(spans.begin(), spans.end());
  // In order of their starts, a span overlaps an earlier one exactly when
  // that one ends after its start.
  uintptr_t end_any = 0, end_written = 0;
  for (const Span& s : spans) {
    if (end_written > s.start || (s.written && end_any > s.start)) {
      return true;
    }
    end_any = std::max(end_any, s.end);
    if (s.written) {
      end_written = std::max(end_written, s.end);
    }
  }
  return false;
}

inline bool supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble ||
      dtype == at::kHalf || dtype == at::kBFloat16;
}

template <typename T>
struct DtypeTag {
  using type = T;
};

// Calls ``f(DtypeTag<T>())`` with the C++ type T of ``dtype``.
template <typename F>
void dispatch_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat:
      f(DtypeTag<float>());
      break;
    case at::kDouble:
      f(DtypeTag<double>());
      break;
    case at::kHalf:
      f(DtypeTag<c10::Half>());
      break;
    case at::kBFloat16:
      f(DtypeTag<c10::BFloat16>());
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

// An in-place update, as ATen's in-place ops record it for autograd.
inline void bump_version(const at::Tensor& t) {
  if (!t.is_inference()) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

// Rows [r0, r1) of tensor ``tensor``.
struct RowTask {
  int64_t tensor, r0, r1;
};

// The rows of a list of tensors (dim 0; the row is everything else), in
// tasks of about ``elems`` elements: small enough to balance two or more
// threads, large enough that a task costs far more than its scheduling.
class RowTasks {
 public:
  explicit RowTasks(int64_t elems) : elems_(elems) {}

  // Adds the rows of tensor number ``t`` (none if it is empty).
  void add(int64_t t, const at::Tensor& p) {
    const int64_t numel = p.numel();
    if (numel == 0) {
      return;
    }
    const int64_t nrows = p.size(0);
    const int64_t n = numel / nrows;
    const int64_t step = std::max<int64_t>(1, elems_ / n);
    for (int64_t r = 0; r < nrows; r += step) {
      const int64_t r1 = std::min(nrows, r + step);
      tasks_.push_back({t, r, r1});
      starts_.push_back(total_);
      total_ += (r1 - r) * n;
    }
  }

  // Calls ``run(task)`` for every task, in parallel. Each thread takes the
  // tasks that start inside its range of elements: the tasks, and so every
  // result, do not depend on the thread count.
  template <typename F>
  void run(const F& run) const {
    at::parallel_for(0, total_, elems_, [&](int64_t begin, int64_t end) {
      auto first = std::lower_bound(starts_.begin(), starts_.end(), begin);
      auto last = std::lower_bound(first, starts_.end(), end);
      for (auto it = first; it != last; ++it) {
        run(tasks_[it - starts_.begin()]);
      }
    });
  }

 private:
  int64_t elems_;
  std::vector<RowTask> tasks_;
  std::vector<int64_t> starts_;  // first element of each task, all tensors
  int64_t total_ = 0;
};

#ifdef MMDET_GC_AVX2
// Loads eight values of dtype T as float, stores them, and rounds floats
// to T (to nearest even, as c10's conversions do).
template <typename T>
struct VecIO;

template <>
struct VecIO<float> {
  static __m256 load(const float* x) { return _mm256_loadu_ps(x); }
  static void store(float* x, __m256 v) { _mm256_storeu_ps(x, v); }
  static __m256 rnd(__m256 v) { return v; }
};

template <>
struct VecIO<c10::Half> {
  static __m256 load(const c10::Half* x) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  }
  static __m128i half(__m256 v) {
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static void store(c10::Half* x, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), half(v));
  }
  static __m256 rnd(__m256 v) { return _mm256_cvtph_ps(half(v)); }
};

template <>
struct VecIO<c10::BFloat16> {
  static __m256 load(const c10::BFloat16* x) {
    const __m256i u = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  // The bfloat16 bits in the low half of each 32-bit lane (c10's
  // round_to_nearest_even: NaN becomes 0x7FC0).
  static __m256i bits(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb =
        _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, lsb), _mm256_set1_epi32(0x7FFF)),
        16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  }
  static void store(c10::BFloat16* x, __m256 v) {
    const __m256i r = bits(v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x),
                     _mm_packus_epi32(_mm256_castsi256_si128(r),
                                      _mm256_extracti128_si256(r, 1)));
  }
  static __m256 rnd(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(bits(v), 16));
  }
};

// Adds the eight floats of ``x`` to the row sum's partial sums acc[0..3]
// (``lo``) and acc[4..7] (``hi``), in double: the scalar order exactly.
inline void vsum(__m256 x, __m256d* lo, __m256d* hi) {
  *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
  *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
}

template <typename T>
inline void vstore_sum(__m256d lo, __m256d hi, RowSum<T>* s) {
  _mm256_storeu_pd(s->acc, lo);
  _mm256_storeu_pd(s->acc + 4, hi);
}
#endif  // MMDET_GC_AVX2

}  // namespace fused
}  // namespace mmdet_gc
