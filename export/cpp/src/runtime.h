// A backend runs one of the export's graphs by name: named host tensors in, named host tensors
// out (every output the manifest lists). ONNX Runtime and TensorRT implement it; the tokenizer,
// layout, state hand-over and greedy loop (generate.h) are shared.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "manifest.h"
#include "tensor.h"

namespace eas {

using Tensors = std::map<std::string, Tensor>;

class Runtime {
public:
    virtual ~Runtime() = default;
    virtual Tensors run(const std::string& graph, const Tensors& inputs) = 0;
    // run, with the outputs named in `into` (output -> input of the same shape and dtype) written
    // into that input's tensor instead of returned: the decode graph's present K/V into its past
    // buffers. This default copies; ONNX Runtime writes them there directly (an in-place update).
    virtual Tensors run_into(const std::string& graph, Tensors& inputs, const std::map<std::string, std::string>& into);
};

// backend "ort" or "trt"; "trt" in a build without TensorRT is an InputError that says so.
// threads: ONNX Runtime's intra-op threads (0: its default, one per physical core)
std::unique_ptr<Runtime> make_runtime(const std::string& backend, const Manifest& manifest, int threads = 0);

std::unique_ptr<Runtime> make_ort_runtime(const Manifest& manifest, int threads);
std::unique_ptr<Runtime> make_trt_runtime(const Manifest& manifest);  // defined only with TensorRT

// names of `specs`, in order, for error messages
std::string names_of(const std::vector<TensorSpec>& specs);

}  // namespace eas
