// The extension module dbl_kernels._C: the dbl::fused schema (kernels in dbl_cpu.cpp and, when
// built with CUDA, dbl_cuda_glue.cpp). Fake tensors and autograd are attached from Python
// (dbl_kernels/ops.py), shared with the Triton op.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing the module runs the static registrations below; the module itself is empty, which is
// what lets it use the stable ABI (py_limited_api) without pybind11.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dbl::fused kernels (CPU, CUDA)", -1, nullptr};
  return PyModule_Create(&module);
}
}

// A fragment: the Python custom ops (dbl::scale_grad_, dbl::fused_triton) share the namespace.
TORCH_LIBRARY_FRAGMENT(dbl, m) {
  m.def(
      "fused(Tensor logits, Tensor labels, Tensor? weight, Tensor class_params, Tensor aux, int reweight_mode, "
      "int weight_norm, bool logit_reg, bool focal, int reduction, float map_alpha, float map_beta, "
      "float map_gamma, float cb_log_beta, float neg_scale, float gamma, float scale, float w_max, bool need_grad) "
      "-> (Tensor, Tensor)");
#ifdef DBL_WITH_CUDA
  m.def("scale_grad_cuda_(Tensor(a!) grad, Tensor grad_output) -> ()");
#endif
}
