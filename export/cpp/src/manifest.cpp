#include "manifest.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "errors.h"

namespace eas {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "eas-export";
constexpr int kVersion = 4;

// Looks keys up by dotted path and names the file and the key in every error.
class Reader {
public:
    Reader(const json& root, std::string file) : root_(root), file_(std::move(file)) {}

    const json& at(const std::string& key) const {
        const json* node = &root_;
        size_t start = 0;
        while (start <= key.size()) {
            size_t dot = key.find('.', start);
            std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
            if (!node->is_object() || !node->contains(part)) fail(key, "is missing");
            node = &(*node)[part];
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        return *node;
    }

    bool has(const std::string& key) const {
        try {
            return !at(key).is_null();
        } catch (const InputError&) {
            return false;
        }
    }

    template <typename T> T get(const std::string& key, const char* expected) const {
        const json& node = at(key);
        try {
            return node.get<T>();
        } catch (const json::exception&) {
            fail(key, std::string("is ") + node.dump().substr(0, 40) + ", expected " + expected);
        }
    }

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw InputError(file_ + ": key " + key + " " + what);
    }

    const std::string& file() const { return file_; }

private:
    const json& root_;
    std::string file_;
};

Dim read_dim(const json& node, const Reader& r, const std::string& key) {
    if (node.is_number_integer()) return Dim{node.get<int64_t>(), ""};
    if (node.is_string()) return Dim{-1, node.get<std::string>()};
    r.fail(key, "has a dim that is neither a size nor a name");
}

std::vector<TensorSpec> read_tensors(const Reader& r, const std::string& key) {
    const json& list = r.at(key);
    if (!list.is_array()) r.fail(key, "is not a list");
    std::vector<TensorSpec> out;
    for (size_t i = 0; i < list.size(); ++i) {
        std::string item = key + "[" + std::to_string(i) + "]";
        const json& t = list[i];
        if (!t.is_object() || !t.contains("name") || !t.contains("shape") || !t.contains("dtype") ||
            !t["name"].is_string() || !t["shape"].is_array() || !t["dtype"].is_string())
            r.fail(item, "is not {name, shape, dtype}");
        TensorSpec spec{t["name"].get<std::string>(), {}, DType::f32};
        for (const json& d : t["shape"]) spec.shape.push_back(read_dim(d, r, item));
        try {
            spec.dtype = dtype_from_name(t["dtype"].get<std::string>());
        } catch (const InputError& e) {
            r.fail(item, e.what());
        }
        out.push_back(std::move(spec));
    }
    return out;
}

std::vector<WeightRef> read_weights(const Reader& r, const std::string& key) {
    const json& list = r.at(key);
    if (!list.is_array()) r.fail(key, "is not a list");
    std::vector<WeightRef> out;
    for (size_t i = 0; i < list.size(); ++i) {
        const std::string item = key + "[" + std::to_string(i) + "]";
        const json& t = list[i];
        WeightRef w;
        try {
            w.name = t.at("name").get<std::string>();
            w.offset = t.at("offset").get<int64_t>();
            w.shape = t.at("shape").get<std::vector<int64_t>>();
            w.dtype = dtype_from_name(t.at("dtype").get<std::string>());
        } catch (const json::exception&) {
            r.fail(item, "is not {name, offset, dtype, shape}");
        } catch (const InputError& e) {
            r.fail(item, e.what());
        }
        bool negative = w.offset < 0;
        for (int64_t d : w.shape) negative |= d < 0;
        if (negative) r.fail(item, "has a negative offset or size");
        out.push_back(std::move(w));
    }
    return out;
}

SequenceSpec read_sequence(const Reader& r) {
    SequenceSpec s;
    const std::string kind = r.get<std::string>("sequence.kind", "a string");
    if (kind == "llava")
        r.fail("sequence.kind", "is \"llava\": this app runs LaVIN-style and text-only exports; ask a LLaVA export "
                                "with python run.py generate --engine DIR");
    if (kind != "lavin" && kind != "text") r.fail("sequence.kind", "is \"" + kind + "\", expected \"lavin\" or \"text\"");
    s.lavin = kind == "lavin";
    s.bos_id = r.get<int64_t>("sequence.bos_id", "an integer");
    s.eos_id = r.get<int64_t>("sequence.eos_id", "an integer");
    s.pad_id = r.get<int64_t>("sequence.pad_id", "an integer");
    s.slot_id = r.get<int64_t>("sequence.slot_id", "an integer");
    if (s.lavin) {
        s.prefix_image = r.get<std::vector<int64_t>>("sequence.prefix_ids.image", "a list of token ids");
        s.prefix_text = r.get<std::vector<int64_t>>("sequence.prefix_ids.text", "a list of token ids");
        s.n_image_tokens = r.get<int64_t>("sequence.n_image_tokens", "an integer");
    }
    return s;
}

ImageSpec read_image(const Reader& r) {
    ImageSpec s;
    s.size = r.get<int>("image.size", "an integer");
    s.divisor = r.get<float>("image.divisor", "a number");
    s.mean = r.get<std::array<float, 3>>("image.mean", "3 numbers");
    s.std = r.get<std::array<float, 3>>("image.std", "3 numbers");
    if (s.size < 1 || !(s.divisor > 0)) r.fail("image", "has a size or divisor that is not positive");
    for (float v : s.std)
        if (!(v > 0)) r.fail("image.std", "has a value that is not positive");
    return s;
}

PromptFormat read_prompt(const Reader& r) {
    PromptFormat p;
    p.task = r.get<std::string>("prompt.format.task", "a string");
    p.templ = r.get<std::string>("prompt.format.template", "a string");
    const size_t slot = p.templ.find("{question}");
    if (slot == std::string::npos || p.templ.find("{question}", slot + 1) != std::string::npos)
        r.fail("prompt.format.template", "must hold {question} exactly once");
    if (r.has("prompt.format.question")) p.question = r.get<std::string>("prompt.format.question", "a string or null");
    p.max_new_tokens = r.get<int>("prompt.format.max_new_tokens", "an integer");
    if (p.max_new_tokens < 1) r.fail("prompt.format.max_new_tokens", "is not positive");
    return p;
}

json parse_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw InputError("cannot read " + path);
    try {
        return json::parse(in);
    } catch (const json::parse_error& e) {
        throw InputError(path + " is not valid JSON (byte " + std::to_string(e.byte) + ")");
    }
}

}  // namespace

const GraphSpec& Manifest::graph(const std::string& name) const {
    auto it = graphs.find(name);
    if (it == graphs.end()) throw InputError(path + ": no graph \"" + name + "\" under key graphs");
    return it->second;
}

Manifest load_manifest(const std::string& folder) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(folder)) throw InputError("engine folder " + folder + " does not exist");
    Manifest m;
    m.folder = folder;
    m.path = folder + "/manifest.json";
    if (!fs::is_regular_file(m.path))
        throw InputError(folder + " has no manifest.json (make an export folder with python export/to_trt.py merged.pt)");
    const json root = parse_file(m.path);
    if (!root.is_object() || root.value("format", json()) != kFormat || root.value("version", json()) != kVersion)
        throw InputError(m.path + " is not an " + std::string(kFormat) + " version " + std::to_string(kVersion) + " manifest");
    const Reader r(root, m.path);

    const json& graphs = r.at("graphs");
    if (!graphs.is_object()) r.fail("graphs", "is not an object");
    for (const auto& [name, _] : graphs.items()) {
        GraphSpec g;
        g.file = r.get<std::string>("graphs." + name + ".file", "a file name");
        if (r.has("graphs." + name + ".data_file")) {
            g.data_file = r.get<std::string>("graphs." + name + ".data_file", "a file name or null");
            g.weights = read_weights(r, "graphs." + name + ".weights");
        }
        g.inputs = read_tensors(r, "graphs." + name + ".inputs");
        g.outputs = read_tensors(r, "graphs." + name + ".outputs");
        m.graphs[name] = std::move(g);
    }
    for (const char* needed : {"embed", "prefill", "decode"})
        if (!m.graphs.count(needed)) r.fail(std::string("graphs.") + needed, "is missing");

    m.past = r.get<std::vector<std::string>>("state.kv.past", "a list of names");
    m.present = r.get<std::vector<std::string>>("state.kv.present", "a list of names");
    if (m.past.size() != m.present.size()) r.fail("state.kv", "has past and present lists of different lengths");
    m.adapters = r.get<std::vector<std::string>>("state.adapters", "a list of names");

    const json& profiles = r.at("profiles");
    if (!profiles.is_object()) r.fail("profiles", "is not an object");
    for (const auto& [dim, _] : profiles.items())
        m.profiles[dim] = r.get<std::array<int64_t, 3>>("profiles." + dim, "[min, opt, max]");
    if (!m.profiles.count("seq")) r.fail("profiles.seq", "is missing");

    m.tokenizer_file = r.get<std::string>("tokenizer.file", "a file name");
    m.eos_id = r.get<int64_t>("tokenizer.eos_id", "an integer");
    m.sequence = read_sequence(r);
    m.prompt = read_prompt(r);
    if (r.has("image")) m.image = read_image(r);
    if (m.sequence.lavin && (!m.image || !m.graphs.count("vision")))
        r.fail("image", "is missing for a LaVIN-style model (no image section or no vision graph)");

    if (r.has("engines.builder")) {
        m.engine_builder = r.get<std::string>("engines.builder", "a string");
        const json& engines = r.at("engines.graphs");
        if (!engines.is_object()) r.fail("engines.graphs", "is not an object");
        for (const auto& [name, _] : engines.items())
            m.engines[name] = r.get<std::string>("engines.graphs." + name + ".file", "a file name");
    }
    return m;
}

}  // namespace eas
