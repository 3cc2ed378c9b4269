// TensorRT backend (GPU): one deserialized engine and execution context per graph, name-based
// I/O, input shapes set per call within the engine's optimization profile, enqueueV3 on a CUDA
// stream. Built only where CMake finds the TensorRT (or TensorRT-RTX) SDK and CUDA; an engine
// runs only with the TensorRT flavour that built it (manifest "engines.builder").
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "errors.h"
#include "runtime.h"

#ifndef EAS_TENSORRT_FLAVOR
#define EAS_TENSORRT_FLAVOR "tensorrt"
#endif

namespace eas {
namespace {

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw RuntimeFailure("CUDA: " + what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override {
        if (severity <= Severity::kERROR) last_error = message;
    }
    std::string last_error;
};

struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc"); }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

DType from_trt(nvinfer1::DataType type, const std::string& what) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return DType::f32;
        case nvinfer1::DataType::kHALF: return DType::f16;
        case nvinfer1::DataType::kINT64: return DType::i64;
        case nvinfer1::DataType::kBOOL: return DType::boolean;
        default: throw RuntimeFailure(what + " has a TensorRT data type the app does not handle");
    }
}

struct Engine {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::vector<std::string> inputs, outputs;
    std::string file;
};

class TrtRuntime : public Runtime {
public:
    explicit TrtRuntime(const Manifest& manifest) {
        if (manifest.engines.empty())
            throw InputError(manifest.path + " lists no TensorRT engines (exported with --onnx-only or without a "
                             "TensorRT module); use --backend ort or export again with TensorRT installed");
        const std::string flavour = manifest.engine_builder.substr(0, manifest.engine_builder.find(' '));
        if (flavour != EAS_TENSORRT_FLAVOR)
            throw InputError(manifest.path + ": the engines were built with " + manifest.engine_builder +
                             ", this eas_generate runs " EAS_TENSORRT_FLAVOR " engines");
        int devices = 0;
        if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
            throw RuntimeFailure("--backend trt needs a CUDA GPU and none is visible");
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw RuntimeFailure("TensorRT: createInferRuntime failed: " + logger_.last_error);
        check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
        for (const auto& [name, spec] : manifest.graphs) engines_[name] = open(manifest, name, spec);
    }

    ~TrtRuntime() override {
        engines_.clear();
        if (stream_) cudaStreamDestroy(stream_);
    }

    Tensors run(const std::string& graph_name, const Tensors& inputs) override {
        Engine& e = engines_.at(graph_name);
        std::vector<std::unique_ptr<DeviceBuffer>> buffers;
        for (const std::string& name : e.inputs) {
            auto it = inputs.find(name);
            if (it == inputs.end()) throw RuntimeFailure("graph " + graph_name + " needs input " + name + ", not given");
            const Tensor& t = it->second;
            nvinfer1::Dims dims{};
            dims.nbDims = static_cast<int32_t>(t.shape.size());
            for (size_t i = 0; i < t.shape.size(); ++i) dims.d[i] = t.shape[i];
            if (!e.context->setInputShape(name.c_str(), dims))
                throw InputError(e.file + ": input " + name + " of shape " + t.shape_string() +
                                 " is outside the engine's optimization profile: " + logger_.last_error);
            buffers.push_back(std::make_unique<DeviceBuffer>(t.bytes.size()));
            check_cuda(cudaMemcpyAsync(buffers.back()->ptr, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice, stream_),
                       "copy " + name + " to the GPU");
            e.context->setTensorAddress(name.c_str(), buffers.back()->ptr);
        }
        Tensors out;
        std::vector<void*> output_ptrs;
        for (const std::string& name : e.outputs) {
            const nvinfer1::Dims dims = e.context->getTensorShape(name.c_str());
            std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
            for (int64_t d : shape)
                if (d < 0) throw RuntimeFailure(e.file + ": output " + name + " has no shape after setting the inputs");
            Tensor t(from_trt(e.engine->getTensorDataType(name.c_str()), e.file + " output " + name), shape);
            buffers.push_back(std::make_unique<DeviceBuffer>(t.bytes.size()));
            e.context->setTensorAddress(name.c_str(), buffers.back()->ptr);
            output_ptrs.push_back(buffers.back()->ptr);
            out[name] = std::move(t);
        }
        if (!e.context->enqueueV3(stream_)) throw RuntimeFailure(e.file + ": enqueueV3 failed: " + logger_.last_error);
        for (size_t i = 0; i < e.outputs.size(); ++i) {
            Tensor& t = out[e.outputs[i]];
            check_cuda(cudaMemcpyAsync(t.bytes.data(), output_ptrs[i], t.bytes.size(), cudaMemcpyDeviceToHost, stream_),
                       "copy " + e.outputs[i] + " from the GPU");
        }
        check_cuda(cudaStreamSynchronize(stream_), "running " + e.file);
        return out;
    }

private:
    Engine open(const Manifest& manifest, const std::string& name, const GraphSpec& spec) {
        auto it = manifest.engines.find(name);
        if (it == manifest.engines.end()) throw InputError(manifest.path + ": key engines.graphs." + name + " is missing");
        Engine e;
        e.file = manifest.file_path(it->second);
        std::ifstream in(e.file, std::ios::binary);
        if (!in) throw InputError("engine file " + e.file + " does not exist or cannot be read");
        const std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        e.engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!e.engine) throw InputError("TensorRT cannot deserialize " + e.file + ": " + logger_.last_error);
        e.context.reset(e.engine->createExecutionContext());
        if (!e.context) throw RuntimeFailure("TensorRT cannot create an execution context for " + e.file);
        std::set<std::string> engine_inputs, engine_outputs;
        for (int32_t i = 0; i < e.engine->getNbIOTensors(); ++i) {
            const std::string io = e.engine->getIOTensorName(i);
            (e.engine->getTensorIOMode(io.c_str()) == nvinfer1::TensorIOMode::kINPUT ? engine_inputs : engine_outputs).insert(io);
        }
        for (const TensorSpec& t : spec.inputs) e.inputs.push_back(t.name);
        for (const TensorSpec& t : spec.outputs) e.outputs.push_back(t.name);
        if (engine_inputs != std::set<std::string>(e.inputs.begin(), e.inputs.end()) ||
            engine_outputs != std::set<std::string>(e.outputs.begin(), e.outputs.end()))
            throw InputError(manifest.path + " does not match " + e.file + ": the engine's I/O names differ from graphs." +
                             name + " (inputs " + names_of(spec.inputs) + ", outputs " + names_of(spec.outputs) + ")");
        return e;
    }

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, Engine> engines_;
};

}  // namespace

std::unique_ptr<Runtime> make_trt_runtime(const Manifest& manifest) { return std::make_unique<TrtRuntime>(manifest); }

}  // namespace eas
