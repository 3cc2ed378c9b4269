// manifest.json of an export folder (written by export/manifest.py): the graphs' I/O, the state
// carried from prefill to decode, the prompt layout, the image preprocessing and the tokenizer.
// Everything the app does is read from here; a missing or mistyped key is an InputError naming
// the file and the key.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "prompt.h"
#include "tensor.h"

namespace eas {

struct Dim {
    int64_t size = -1;  // a fixed size, or -1 for a named dynamic dim
    std::string name;   // "batch", "seq", "slots", ... (see "profiles")
};

struct TensorSpec {
    std::string name;
    std::vector<Dim> shape;
    DType dtype = DType::f32;
};

// A weight of a graph in its external data file: read there by the runtime, once for all graphs.
struct WeightRef {
    std::string name;  // the graph's initializer
    int64_t offset = 0;
    DType dtype = DType::f32;
    std::vector<int64_t> shape;
};

struct GraphSpec {
    std::string file;       // relative to the manifest's folder
    std::string data_file;  // its external weights, or empty (all in the graph file)
    std::vector<WeightRef> weights;
    std::vector<TensorSpec> inputs, outputs;
};

struct SequenceSpec {
    bool lavin = false;  // "lavin": [pad | modality | BOS | prefix | image slots | prompt]; "text": [pad | BOS | prompt]
    int64_t bos_id = 1, eos_id = 2, pad_id = 0, slot_id = 0;
    std::vector<int64_t> prefix_image, prefix_text;  // lavin only
    int64_t n_image_tokens = 0;
};

struct ImageSpec {
    int size = 0;
    float divisor = 0;  // pixel / divisor - mean, then / std: each a float32 step
    std::array<float, 3> mean{}, std{};
};

struct Manifest {
    std::string folder, path;
    std::map<std::string, GraphSpec> graphs;
    std::vector<std::string> past, present;  // present[i] becomes past[i] for the next step
    std::vector<std::string> adapters;        // prefill outputs passed unchanged to every decode step
    std::map<std::string, std::array<int64_t, 3>> profiles;  // dim name -> min, opt, max
    std::string tokenizer_file;
    int64_t eos_id = 2;
    SequenceSpec sequence;
    PromptFormat prompt;
    std::optional<ImageSpec> image;  // absent for a text-only model
    std::string engine_builder;                   // e.g. "tensorrt 10.x" or "tensorrt_rtx 1.x"; empty without engines
    std::map<std::string, std::string> engines;   // graph -> engine file

    const GraphSpec& graph(const std::string& name) const;
    std::string file_path(const std::string& relative) const { return folder + "/" + relative; }
};

Manifest load_manifest(const std::string& folder);

}  // namespace eas
