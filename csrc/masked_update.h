// Fused masked optimizer updates for CPU tensors (one pass over memory, OpenMP).
// The specification is the torch reference in trustfast/ops/masked_update.py.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace trustfast {

void masked_sgd_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                     const std::vector<at::Tensor>& momentum_bufs,
                     const std::vector<at::Tensor>& masks, double lr, double momentum,
                     double dampening, bool nesterov, double weight_decay, double l1,
                     bool l1_proximal);

void masked_adamw_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                       const std::vector<at::Tensor>& exp_avgs,
                       const std::vector<at::Tensor>& exp_avg_sqs,
                       const std::vector<at::Tensor>& masks, double lr, double beta1, double beta2,
                       double eps, double weight_decay, double l1, bool l1_proximal,
                       double bias_correction1, double bias_correction2_sqrt);

// Dry runs: true when every value the matching update would store is finite (and, with
// check_grads, every gradient, pruned positions included). They write nothing.
bool masked_sgd_finite(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                       const std::vector<at::Tensor>& momentum_bufs,
                       const std::vector<at::Tensor>& masks, double lr, double momentum,
                       double dampening, bool nesterov, double weight_decay, double l1,
                       bool l1_proximal, bool check_grads);

bool masked_adamw_finite(const std::vector<at::Tensor>& params,
                         const std::vector<at::Tensor>& grads,
                         const std::vector<at::Tensor>& exp_avgs,
                         const std::vector<at::Tensor>& exp_avg_sqs,
                         const std::vector<at::Tensor>& masks, double lr, double beta1,
                         double beta2, double eps, double weight_decay, double l1,
                         bool l1_proximal, double bias_correction1, double bias_correction2_sqrt,
                         bool check_grads);

bool all_finite(const std::vector<at::Tensor>& tensors);

}  // namespace trustfast
