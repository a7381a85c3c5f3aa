// Fused PGD step: sign (or normalized) step, projection to the eps-ball, clamp to [0, 1], and
// optional best-iterate copy, reading each input once. L-inf runs over element chunks (any
// batch size keeps both threads busy); L2 needs two per-sample norms, so it runs per sample.
#include "pgd_step.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace trustfast {
namespace {

constexpr int64_t kChunk = 32768;

template <typename acc_t>
inline acc_t clamp(acc_t v, acc_t lo, acc_t hi) {
  return std::min(std::max(v, lo), hi);
}

template <typename acc_t>
inline acc_t sign_of(acc_t x) {
  return static_cast<acc_t>((x > acc_t(0)) - (x < acc_t(0)));
}

template <typename scalar_t>
void linf(scalar_t* out, const scalar_t* xa, const scalar_t* x, const scalar_t* g,
          const at::opmath_type<scalar_t>* eps, const at::opmath_type<scalar_t>* alpha,
          int64_t total, int64_t row) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  const int threads = total <= kChunk ? 1 : at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(total, (c + 1) * kChunk);
    for (int64_t b = c * kChunk; b < end;) {
      const int64_t s = b / row;
      const int64_t stop = std::min(end, (s + 1) * row);
      const acc_t e = eps[s], a = alpha[s];
#pragma omp simd
      for (int64_t i = b; i < stop; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        const acc_t stepped = static_cast<acc_t>(xa[i]) + a * sign_of(static_cast<acc_t>(g[i]));
        const acc_t delta = clamp(stepped - xi, -e, e);
        out[i] = static_cast<scalar_t>(clamp(xi + delta, acc_t(0), acc_t(1)));
      }
      b = stop;
    }
  }
}

template <typename scalar_t>
void l2(scalar_t* out, const scalar_t* xa, const scalar_t* x, const scalar_t* g,
        const at::opmath_type<scalar_t>* eps, const at::opmath_type<scalar_t>* alpha, int64_t n,
        int64_t row, double eps_div) {
  using acc_t = at::opmath_type<scalar_t>;
  const int threads = n * row <= kChunk ? 1 : at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t s = 0; s < n; ++s) {
    const int64_t base = s * row;
    double g_sq = 0.0;
    for (int64_t i = base; i < base + row; ++i) {
      const double gi = static_cast<double>(g[i]);
      g_sq += gi * gi;
    }
    const acc_t g_norm = static_cast<acc_t>(std::sqrt(g_sq)) + static_cast<acc_t>(eps_div);
    const acc_t a = alpha[s];
    double d_sq = 0.0;
    for (int64_t i = base; i < base + row; ++i) {
      const acc_t stepped =
          static_cast<acc_t>(xa[i]) + a * (static_cast<acc_t>(g[i]) / g_norm);
      const double d = static_cast<double>(stepped - static_cast<acc_t>(x[i]));
      d_sq += d * d;
    }
    const acc_t d_norm = static_cast<acc_t>(std::sqrt(d_sq));
    const acc_t factor = d_norm > acc_t(0) ? std::min(eps[s] / d_norm, acc_t(1)) : acc_t(1);
    for (int64_t i = base; i < base + row; ++i) {
      const acc_t xi = static_cast<acc_t>(x[i]);
      const acc_t stepped =
          static_cast<acc_t>(xa[i]) + a * (static_cast<acc_t>(g[i]) / g_norm);
      out[i] = static_cast<scalar_t>(clamp(xi + (stepped - xi) * factor, acc_t(0), acc_t(1)));
    }
  }
}

}  // namespace

void pgd_step(at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& x_clean,
              const at::Tensor& grad, const at::Tensor& eps, const at::Tensor& alpha, bool l2_norm,
              const std::optional<at::Tensor>& improved, std::optional<at::Tensor> best_adv,
              double eps_for_division) {
  const int64_t n = x_adv.size(0);
  const int64_t total = x_adv.numel();
  const int64_t row = n > 0 ? total / n : 0;
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&out, &x_adv, &x_clean, &grad}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "pgd_step: CPU contiguous tensors");
    TORCH_CHECK(t->scalar_type() == x_adv.scalar_type() && t->numel() == total,
                "pgd_step: tensors must match x_adv");
  }
  TORCH_CHECK(eps.numel() == n && alpha.numel() == n, "pgd_step: eps/alpha need one per sample");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(eps.scalar_type() == c10::CppTypeToScalarType<acc_t>::value &&
                    alpha.scalar_type() == eps.scalar_type(),
                "pgd_step: eps/alpha must be float32 (float64 for float64 inputs)");
    const scalar_t* xa = x_adv.data_ptr<scalar_t>();
    if (improved.has_value() && best_adv.has_value()) {
      TORCH_CHECK(improved->numel() == n && improved->scalar_type() == at::kByte,
                  "pgd_step: improved must be uint8 with one flag per sample");
      TORCH_CHECK(best_adv->is_contiguous() && best_adv->numel() == total,
                  "pgd_step: best_adv must be contiguous and match x_adv");
      const uint8_t* flag = improved->data_ptr<uint8_t>();
      scalar_t* best = best_adv->data_ptr<scalar_t>();
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          if (flag[s]) std::memcpy(best + s * row, xa + s * row, sizeof(scalar_t) * row);
        }
      });
    }
    if (l2_norm) {
      l2<scalar_t>(out.data_ptr<scalar_t>(), xa, x_clean.data_ptr<scalar_t>(),
                   grad.data_ptr<scalar_t>(), eps.data_ptr<acc_t>(), alpha.data_ptr<acc_t>(), n,
                   row, eps_for_division);
    } else {
      linf<scalar_t>(out.data_ptr<scalar_t>(), xa, x_clean.data_ptr<scalar_t>(),
                     grad.data_ptr<scalar_t>(), eps.data_ptr<acc_t>(), alpha.data_ptr<acc_t>(),
                     total, row);
    }
  });
}

}  // namespace trustfast
