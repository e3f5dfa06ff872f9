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

}  // namespace fused
}  // namespace mmdet_gc
