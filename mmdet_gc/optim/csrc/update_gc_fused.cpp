// Fused CPU kernels of GC on the update of any optimizer (the hooks of
// mmdet_gc/optim/any_optimizer.py with fused=True).
//
// Yong et al., "Gradient Centralization: A New Optimization Technique for
// Deep Neural Networks", ECCV 2020 (arXiv:2004.01461).
//
// GC on the update keeps every row mean of a centralized weight where it
// was before the step: with the row means m0 recorded before the step
// (row_means), the step's change of each row mean is removed after it
// (restore_row_means_):
//
//     p = p - (mean(p over the row) - m0)
//
// in one pass per row: the mean read from memory, the subtraction from
// cache, where the Python hooks read the weight twice and write it once.
// The means are summed in double in a fixed order (RowSum), so the result
// does not depend on the thread count; they and the change are kept in
// float (double for float64 weights), and the subtraction is rounded once
// to the weight's dtype, as ``p.sub_(row_mean(p).sub_(m0))`` rounds it.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <type_traits>
#include <vector>

#include "gc_fused_common.h"

namespace {

using namespace mmdet_gc::fused;  // NOLINT(build/namespaces)

// The mean of one row of n values.
template <typename T>
typename OpMath<T>::type mean_of(const T* x, int64_t n) {
  using O = typename OpMath<T>::type;
  RowSum<T> s;
  const int64_t n8 = n - n % 8;
#ifdef MMDET_GC_AVX2
  if constexpr (!std::is_same<T, double>::value) {
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (int64_t i = 0; i < n8; i += 8) {
      vsum(VecIO<T>::load(x + i), &lo, &hi);
    }
    vstore_sum(lo, hi, &s);
  } else {
#endif
    for (int64_t i = 0; i < n8; i += 8) {
      for (int j = 0; j < 8; ++j) {
        s.add(j, static_cast<double>(static_cast<O>(x[i + j])));
      }
    }
#ifdef MMDET_GC_AVX2
  }
#endif
  for (int64_t i = n8; i < n; ++i) {
    s.tail += static_cast<double>(static_cast<O>(x[i]));
  }
  return s.mean(n);
}

// x -= delta over one row, rounded once to T.
template <typename T>
void subtract(T* x, int64_t n, typename OpMath<T>::type delta) {
  using O = typename OpMath<T>::type;
  int64_t i = 0;
#ifdef MMDET_GC_AVX2
  if constexpr (!std::is_same<T, double>::value) {
    const __m256 d = _mm256_set1_ps(delta);
    for (; i < n - n % 8; i += 8) {
      VecIO<T>::store(x + i, _mm256_sub_ps(VecIO<T>::load(x + i), d));
    }
  }
#endif
  for (; i < n; ++i) {
    x[i] = static_cast<T>(static_cast<O>(x[i]) - delta);
  }
}

at::ScalarType mean_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_params(const std::vector<at::Tensor>& params, const char* op) {
  for (size_t t = 0; t < params.size(); ++t) {
    const at::Tensor& p = params[t];
    TORCH_CHECK(p.device().is_cpu() && p.dim() >= 2 && p.numel() > 0 &&
                    reads_as_values(p) && supported_dtype(p.scalar_type()),
                op, ": param ", t, " must be a non-empty contiguous CPU "
                "tensor with rows, of a floating dtype, without the "
                "negative or conjugate bit");
  }
}

// About this many elements per task (RowTasks).
constexpr int64_t kTaskElems = 1 << 15;

// Calls ``f(tag, task, p, n)`` for every task, in parallel: ``tag`` the
// DtypeTag of its param ``p``, whose rows hold ``n`` values each.
template <typename F>
void for_each_task(const RowTasks& tasks,
                   const std::vector<at::Tensor>& params, const char* op,
                   const F& f) {
  tasks.run([&](const RowTask& task) {
    const at::Tensor& p = params[task.tensor];
    const int64_t n = p.numel() / p.size(0);
    dispatch_dtype(p.scalar_type(), op,
                   [&](auto tag) { f(tag, task, p, n); });
  });
}

}  // namespace

// The mean of every row (dim 0) of each param: float tensors of shape
// (rows,), double for float64 params.
std::vector<at::Tensor> row_means(const std::vector<at::Tensor>& params) {
  check_params(params, "row_means");
  std::vector<at::Tensor> out;
  RowTasks tasks(kTaskElems);
  for (size_t t = 0; t < params.size(); ++t) {
    const at::Tensor& p = params[t];
    out.push_back(at::empty({p.size(0)}, p.options().dtype(
                                             mean_dtype(p.scalar_type()))));
    tasks.add(static_cast<int64_t>(t), p);
  }
  for_each_task(tasks, params, "row_means",
                [&](auto tag, const RowTask& task, const at::Tensor& p,
                    int64_t n) {
                  using T = typename decltype(tag)::type;
                  using O = typename OpMath<T>::type;
                  const T* x = p.const_data_ptr<T>();
                  O* m = out[task.tensor].data_ptr<O>();
                  for (int64_t r = task.r0; r < task.r1; ++r) {
                    m[r] = mean_of<T>(x + r * n, n);
                  }
                });
  return out;
}

// p -= mean(p) - before, per row of each param, in place.
void restore_row_means_(const std::vector<at::Tensor>& params,
                        const std::vector<at::Tensor>& before) {
  check_params(params, "restore_row_means_");
  TORCH_CHECK(before.size() == params.size(), "restore_row_means_: ",
              params.size(), " params but ", before.size(), " means");
  RowTasks tasks(kTaskElems);
  for (size_t t = 0; t < params.size(); ++t) {
    const at::Tensor& p = params[t];
    const at::Tensor& m = before[t];
    TORCH_CHECK(m.device().is_cpu() && reads_as_values(m) &&
                    m.numel() == p.size(0) &&
                    m.scalar_type() == mean_dtype(p.scalar_type()),
                "restore_row_means_: means ", t, " must be what row_means "
                "returned for that param");
    tasks.add(static_cast<int64_t>(t), p);
  }
  for_each_task(tasks, params, "restore_row_means_",
                [&](auto tag, const RowTask& task, const at::Tensor& p,
                    int64_t n) {
                  using T = typename decltype(tag)::type;
                  using O = typename OpMath<T>::type;
                  T* x = p.data_ptr<T>();
                  const O* m = before[task.tensor].const_data_ptr<O>();
                  for (int64_t r = task.r0; r < task.r1; ++r) {
                    T* row = x + r * n;
                    subtract<T>(row, n, mean_of<T>(row, n) - m[r]);
                  }
                });
  for (const at::Tensor& p : params) {
    bump_version(p);
  }
}
