#include "runtime.h"

#include "errors.h"

namespace eas {

std::unique_ptr<Runtime> make_runtime(const std::string& backend, const Manifest& manifest, int threads) {
    if (backend == "ort") return make_ort_runtime(manifest, threads);
    if (backend == "trt") {
#ifdef EAS_WITH_TENSORRT
        return make_trt_runtime(manifest);
#else
        throw InputError("--backend trt: this eas_generate was built without TensorRT (CMake found no TensorRT SDK "
                         "and CUDA; set TENSORRT_ROOT and rebuild, see export/cpp/README.md)");
#endif
    }
    throw InputError("--backend " + backend + ": expected ort or trt");
}

Tensors Runtime::run_into(const std::string& graph, Tensors& inputs, const std::map<std::string, std::string>& into) {
    Tensors out = run(graph, inputs);
    for (const auto& [output, input] : into) {
        auto it = out.find(output);
        Tensor& target = inputs.at(input);
        if (it == out.end() || it->second.shape != target.shape || it->second.dtype != target.dtype)
            throw RuntimeFailure("graph " + graph + ": output " + output + " does not match input " + input);
        target = std::move(it->second);
        out.erase(it);
    }
    return out;
}

std::string names_of(const std::vector<TensorSpec>& specs) {
    std::string out = "[";
    for (size_t i = 0; i < specs.size(); ++i) out += (i ? ", " : "") + specs[i].name;
    return out + "]";
}

}  // namespace eas
