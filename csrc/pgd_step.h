// Fused PGD step for CPU tensors. The specification is trustfast/ops/pgd_step.py.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace trustfast {

void pgd_step(at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& x_clean,
              const at::Tensor& grad, const at::Tensor& eps, const at::Tensor& alpha, bool l2,
              const std::optional<at::Tensor>& improved, std::optional<at::Tensor> best_adv,
              double eps_for_division);

}  // namespace trustfast
