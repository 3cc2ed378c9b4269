// ONNX Runtime backend (CPU): one session per graph of the manifest. The headers are Debian's
// libonnxruntime-dev, the library the onnxruntime pip wheel's; the C API is versioned, so older
// headers drive a newer library.
//
// Weights are held once for all graphs. The prefill and decode graphs read the same tensors from
// one data file, and each session would load its own copy and pre-pack its MatMul weights into
// another. Here the data file is mapped once, every graph's weights are handed to its session over
// that mapping (AddInitializer: ONNX Runtime reads the caller's buffer), and the sessions share one
// pre-packed copy of each (PrepackedWeightsContainer). Dim 1024, 417 MB of weights: 465 MB of
// anonymous memory in eas_serve, against 1,059 MB with each session loading its own.
#include <fcntl.h>
#include <onnxruntime_cxx_api.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

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

// A data file mapped copy-on-write for the runtime's lifetime: its pages are the page cache's until
// written (ONNX Runtime only reads initializers), so the weights are not copied into the process.
class Mapping {
public:
    explicit Mapping(const std::string& path) : path_(path) {
        const int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) throw InputError("cannot open the weights file " + path + ": " + std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || st.st_size == 0) {
            ::close(fd);
            throw InputError("the weights file " + path + " is empty or unreadable");
        }
        size_ = static_cast<size_t>(st.st_size);
        void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        ::close(fd);
        if (p == MAP_FAILED) throw RuntimeFailure("cannot map " + path + ": " + std::strerror(errno));
        data_ = static_cast<unsigned char*>(p);
    }
    ~Mapping() { ::munmap(data_, size_); }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;

    unsigned char* at(size_t offset, size_t bytes, const std::string& what) const {
        if (offset > size_ || bytes > size_ - offset)
            throw InputError(what + " lies past the end of " + path_ + " (" + std::to_string(size_) + " bytes)");
        return data_ + offset;
    }

private:
    std::string path_;
    unsigned char* data_ = nullptr;
    size_t size_ = 0;
};

struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};

struct PrepackedDeleter {  // this header version has the C API's container, not a C++ wrapper
    void operator()(OrtPrepackedWeightsContainer* p) const { Ort::GetApi().ReleasePrepackedWeightsContainer(p); }
};

std::unique_ptr<OrtPrepackedWeightsContainer, PrepackedDeleter> prepacked_container() {
    OrtPrepackedWeightsContainer* p = nullptr;
    Ort::ThrowOnError(Ort::GetApi().CreatePrepackedWeightsContainer(&p));
    return std::unique_ptr<OrtPrepackedWeightsContainer, PrepackedDeleter>(p);
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
        return over(t.bytes.data(), t.bytes.size(), t.shape, t.dtype);
    }

    static Ort::Value over(void* data, size_t bytes, const std::vector<int64_t>& shape, DType dtype) {
        static const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        return Ort::Value::CreateTensor(memory, data, bytes, shape.data(), shape.size(), onnx_type(dtype));
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
        for (const WeightRef& w : spec.weights)
            options.AddInitializer(w.name.c_str(), shared_weight(manifest, name, spec.data_file, w));
        Graph g;
        try {
            g.session = std::make_unique<Ort::Session>(env_, path.c_str(), options, prepacked_.get());
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

    // The weight at w.offset of the data file, one OrtValue for every graph that reads it.
    const OrtValue* shared_weight(const Manifest& manifest, const std::string& graph, const std::string& file,
                                  const WeightRef& w) {
        std::string key = file + ":" + std::to_string(w.offset) + ":" + dtype_name(w.dtype);
        for (int64_t d : w.shape) key += "x" + std::to_string(d);
        auto it = weights_.find(key);
        if (it != weights_.end()) return it->second;
        auto& mapping = files_[file];
        if (!mapping) mapping = std::make_unique<Mapping>(manifest.file_path(file));
        size_t bytes = dtype_size(w.dtype);
        for (int64_t d : w.shape) bytes *= static_cast<size_t>(d);
        void* data = mapping->at(static_cast<size_t>(w.offset), bytes,
                                 "weight " + w.name + " of graph " + graph + " in " + manifest.path);
        // The exporter aligns every tensor to 64 bytes (export/external_data.py); one that is not
        // is read into an aligned copy.
        if (w.offset % 64) {
            void* copy = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
            if (!copy) throw RuntimeFailure("out of memory copying weight " + w.name);
            std::memcpy(copy, data, bytes);
            copies_.emplace_back(copy);
            data = copy;
        }
        values_.push_back(over(data, bytes, w.shape, w.dtype));
        return weights_[key] = values_.back();
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

    // Declared before the sessions, so destroyed after them: what the sessions read.
    std::map<std::string, std::unique_ptr<Mapping>> files_;
    std::vector<std::unique_ptr<void, FreeDeleter>> copies_;
    std::vector<Ort::Value> values_;
    std::map<std::string, const OrtValue*> weights_;
    std::unique_ptr<OrtPrepackedWeightsContainer, PrepackedDeleter> prepacked_ = prepacked_container();
    Ort::Env env_;
    std::map<std::string, Graph> graphs_;
};

}  // namespace

std::unique_ptr<Runtime> make_ort_runtime(const Manifest& manifest, int threads) {
    return std::make_unique<OrtRuntime>(manifest, threads);
}

}  // namespace eas
