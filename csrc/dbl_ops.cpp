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
  // Contract v2 (dbl_kernels/_spec.py): the options travel packed in modes and scalars.
  m.def(
      "fused(Tensor logits, Tensor labels, Tensor? crow_indices, Tensor? col_indices, Tensor? weight, "
      "Tensor class_params, Tensor aux, Tensor? row_stats, int[] modes, float[] scalars, bool need_grad) "
      "-> (Tensor, Tensor)");
#ifdef DBL_WITH_CUDA
  m.def("scale_grad_cuda_(Tensor(a!) grad, Tensor grad_output) -> ()");
#endif
}
