// The operator library `unimixer_C`: schemas (TORCH_LIBRARY) and their CUDA kernels
// (TORCH_LIBRARY_IMPL). Python reaches them as torch.ops.unimixer_C.<name>; fake (meta) kernels
// and autograd are registered from Python in unimixer_kernels/ops/<op>_cuda.py. No pybind entry
// points: dispatcher ops stay opaque to torch.compile and survive torch.export.

#include <Python.h>

#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(unimixer_C, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // Each op names the Python module holding its fake kernel and autograd formula; torch imports
  // it when it needs them.
  m.set_python_module("unimixer_kernels.ops.rms_norm_cuda");
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)", tags);
  m.def("add_rms_norm_fwd(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor, Tensor)", tags);
  m.def("rms_norm_bwd(Tensor dy, Tensor? dsum, Tensor s, Tensor weight, Tensor rstd) -> (Tensor, Tensor)", tags);
}

TORCH_LIBRARY_FRAGMENT(unimixer_C, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.set_python_module("unimixer_kernels.ops.sinkhorn_cuda");
  m.def("sinkhorn_fwd(Tensor logits, float tau, int iters, bool symmetric) -> (Tensor, Tensor, Tensor)", tags);
  m.def("sinkhorn_bwd(Tensor dp, Tensor logits, Tensor u, Tensor v, float tau, int iters, bool symmetric) -> Tensor",
        tags);
  m.def("sinkhorn_bwd_(Tensor dp, Tensor(a!) logits, Tensor u, Tensor v, float tau, int iters, bool symmetric) -> ()",
        tags);
  // a host-side query (no kernel runs): the tiles a call would take, for the Python side's checks
  m.def("sinkhorn_plan(Tensor logits, bool symmetric) -> int[]");
}

TORCH_LIBRARY_FRAGMENT(unimixer_C, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.set_python_module("unimixer_kernels.ops.pswiglu_cuda");
  m.def("pswiglu_fwd(Tensor u, Tensor w_gate, Tensor w_up, Tensor w_down, Tensor? b_gate, Tensor? b_up, "
        "Tensor? b_down, bool save) -> (Tensor, Tensor, Tensor)", tags);
}

TORCH_LIBRARY_IMPL(unimixer_C, CUDA, m) {
  m.impl("rms_norm_fwd", &unimixer::rms_norm_fwd);
  m.impl("add_rms_norm_fwd", &unimixer::add_rms_norm_fwd);
  m.impl("rms_norm_bwd", &unimixer::rms_norm_bwd);
  m.impl("sinkhorn_fwd", &unimixer::sinkhorn_fwd);
  m.impl("sinkhorn_bwd", &unimixer::sinkhorn_bwd);
  m.impl("sinkhorn_bwd_", &unimixer::sinkhorn_bwd_);
  m.impl("sinkhorn_plan", &unimixer::sinkhorn_plan);
  m.impl("pswiglu_fwd", &unimixer::pswiglu_fwd);
}

// Importing `unimixer_kernels._C` as a Python module only loads the library (which registers the
// ops above); the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "unimixer_C operator library", -1, nullptr};
  return PyModule_Create(&module);
}
