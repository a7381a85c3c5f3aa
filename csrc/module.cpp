// Python bindings for trustfast._C. Import it only after torch (it links against libtorch).
#include <torch/extension.h>

#include "masked_update.h"
#include "pgd_step.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "trustfast C++ CPU kernels";
  m.def("masked_sgd_step", &trustfast::masked_sgd_step,
        "Fused masked SGD update (weight decay, l1, momentum, mask) over a list of tensors",
        py::arg("params"), py::arg("grads"), py::arg("momentum_bufs"), py::arg("masks"),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"),
        py::arg("weight_decay"), py::arg("l1"), py::arg("l1_proximal"));
  m.def("masked_adamw_step", &trustfast::masked_adamw_step,
        "Fused masked AdamW update (decoupled weight decay, l1, bias correction, mask)",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("masks"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("l1"), py::arg("l1_proximal"),
        py::arg("bias_correction1"), py::arg("bias_correction2_sqrt"));
  m.def("pgd_step", &trustfast::pgd_step,
        "Fused PGD step (sign / L2 step, eps-ball projection, [0, 1] clamp, best-iterate copy)",
        py::arg("out"), py::arg("x_adv"), py::arg("x_clean"), py::arg("grad"), py::arg("eps"),
        py::arg("alpha"), py::arg("l2"), py::arg("improved"), py::arg("best_adv"),
        py::arg("eps_for_division"));
  m.def("masked_sgd_finite", &trustfast::masked_sgd_finite,
        "Dry run of masked_sgd_step: whether every value it would store is finite (writes nothing)",
        py::arg("params"), py::arg("grads"), py::arg("momentum_bufs"), py::arg("masks"),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"),
        py::arg("weight_decay"), py::arg("l1"), py::arg("l1_proximal"), py::arg("check_grads"));
  m.def("masked_adamw_finite", &trustfast::masked_adamw_finite,
        "Dry run of masked_adamw_step: whether every value it would store is finite",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("masks"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("l1"), py::arg("l1_proximal"),
        py::arg("bias_correction1"), py::arg("bias_correction2_sqrt"), py::arg("check_grads"));
  m.def("all_finite", &trustfast::all_finite,
        "Whether every element of every (contiguous CPU) tensor is finite", py::arg("tensors"));
  m.def("openmp_threads", []() { return at::get_num_threads(); },
        "Threads the kernels use (torch.get_num_threads())");
}
