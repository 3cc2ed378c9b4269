// ONNX Runtime backend (CPU): one session per graph of the manifest. The headers are Debian's
// libonnxruntime-dev, the library the onnxruntime pip wheel's; the C API is versioned, so older
// headers drive a newer library.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "errors.h"
#include "runtime.h"

namespace eas {
namespace {

ONNXTensorElementDataType onnx_type(DType dtype) {
    switch (dtype) {
        case DType::f32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case DType::f16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        case DType::i64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case DType::boolean: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

DType from_onnx_type(ONNXTensorElementDataType type, const std::string& what) {
    switch (type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return DType::f32;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return DType::f16;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return DType::i64;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return DType::boolean;
        default: throw RuntimeFailure(what + " has an element type (" + std::to_string(type) + ") the app does not handle");
    }
}

struct Graph {
    std::unique_ptr<Ort::Session> session;
    std::vector<std::string> inputs, outputs;
};

class OrtRuntime : public Runtime {
public:
    OrtRuntime(const Manifest& manifest, int threads) : env_(ORT_LOGGING_LEVEL_ERROR, "eas_generate") {
        for (const auto& [name, spec] : manifest.graphs) graphs_[name] = open(manifest, name, spec, threads);
    }

    Tensors run(const std::string& graph_name, const Tensors& inputs) override {
        return execute(graph_name, inputs, {});
    }

    // The outputs in `into` are pre-allocated on their inputs' buffers: the decode graph's scatter
    // sees its output in its input's memory and writes only the new slot (no copy of the cache).
    Tensors run_into(const std::string& graph_name, Tensors& inputs, const std::map<std::string, std::string>& into) override {
        const Graph& graph = graphs_.at(graph_name);
        std::map<std::string, Tensor*> targets;
        for (const auto& [output, input] : into) {
            auto it = inputs.find(input);
            if (it == inputs.end() || std::find(graph.outputs.begin(), graph.outputs.end(), output) == graph.outputs.end())
                throw RuntimeFailure("graph " + graph_name + ": cannot write output " + output + " into input " + input);
            targets[output] = &it->second;
        }
        return execute(graph_name, inputs, targets);
    }

private:
    static Ort::Value wrap(Tensor& t) {  // ORT reads (or, as an output, writes) the tensor's own buffer
        static const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        return Ort::Value::CreateTensor(memory, t.bytes.data(), t.bytes.size(), t.shape.data(), t.shape.size(),
                                        onnx_type(t.dtype));
    }

    Tensors execute(const std::string& graph_name, const Tensors& inputs, const std::map<std::string, Tensor*>& targets) {
        Graph& graph = graphs_.at(graph_name);
        std::vector<Ort::Value> values, results;
        std::vector<const char*> input_names, output_names;
        for (const std::string& name : graph.inputs) {
            auto it = inputs.find(name);
            if (it == inputs.end()) throw RuntimeFailure("graph " + graph_name + " needs input " + name + ", not given");
            values.push_back(wrap(const_cast<Tensor&>(it->second)));  // only read, unless also a target
            input_names.push_back(name.c_str());
        }
        for (const std::string& name : graph.outputs) {
            auto it = targets.find(name);
            results.push_back(it == targets.end() ? Ort::Value{nullptr} : wrap(*it->second));
            output_names.push_back(name.c_str());
        }
        try {
            graph.session->Run(Ort::RunOptions{nullptr}, input_names.data(), values.data(), values.size(),
                               output_names.data(), results.data(), results.size());
        } catch (const Ort::Exception& e) {
            throw RuntimeFailure("onnxruntime: graph " + graph_name + ": " + e.what());
        }
        Tensors out;
        for (size_t i = 0; i < results.size(); ++i) {
            if (targets.count(graph.outputs[i])) continue;  // written in place
            const auto info = results[i].GetTensorTypeAndShapeInfo();
            Tensor t(from_onnx_type(info.GetElementType(), graph_name + " output " + graph.outputs[i]), info.GetShape());
            std::memcpy(t.bytes.data(), results[i].GetTensorRawData(), t.bytes.size());
            out[graph.outputs[i]] = std::move(t);
        }
        return out;
    }

    Graph open(const Manifest& manifest, const std::string& name, const GraphSpec& spec, int threads) {
        const std::string path = manifest.file_path(spec.file);
        if (!std::filesystem::is_regular_file(path))
            throw InputError("graph file " + path + " (graphs." + name + ".file in " + manifest.path + ") does not exist");
        Ort::SessionOptions options;
        if (threads > 0) options.SetIntraOpNumThreads(threads);
        // worker threads spin while a run is in flight (quick hand-offs between a decode step's many
        // small operators) and stop when it returns: an idle app, or one of several graphs or
        // processes waiting its turn, leaves the cores to others (as eas/bench/backends.py)
        options.AddConfigEntry("session.intra_op.allow_spinning", "1");
        options.AddConfigEntry("session.force_spinning_stop", "1");
        Graph g;
        try {
            g.session = std::make_unique<Ort::Session>(env_, path.c_str(), options);
        } catch (const Ort::Exception& e) {
            throw InputError("onnxruntime cannot load " + path + ": " + e.what());
        }
        Ort::AllocatorWithDefaultOptions allocator;
        for (size_t i = 0; i < g.session->GetInputCount(); ++i)
            g.inputs.emplace_back(g.session->GetInputNameAllocated(i, allocator).get());
        for (size_t i = 0; i < g.session->GetOutputCount(); ++i)
            g.outputs.emplace_back(g.session->GetOutputNameAllocated(i, allocator).get());
        check_names(manifest, path, "inputs", g.inputs, spec.inputs);
        check_names(manifest, path, "outputs", g.outputs, spec.outputs);
        return g;
    }

    static void check_names(const Manifest& manifest, const std::string& path, const std::string& kind,
                            const std::vector<std::string>& actual, const std::vector<TensorSpec>& declared) {
        bool same = actual.size() == declared.size();
        for (size_t i = 0; same && i < actual.size(); ++i) same = actual[i] == declared[i].name;
        if (same) return;
        std::string have = "[";
        for (size_t i = 0; i < actual.size(); ++i) have += (i ? ", " : "") + actual[i];
        throw InputError(manifest.path + " does not match " + path + ": the graph's " + kind + " are " + have +
                         "], the manifest's " + names_of(declared));
    }

    Ort::Env env_;
    std::map<std::string, Graph> graphs_;
};

}  // namespace

std::unique_ptr<Runtime> make_ort_runtime(const Manifest& manifest, int threads) {
    return std::make_unique<OrtRuntime>(manifest, threads);
}

}  // namespace eas
