// eas_serve: the app's generation loop (generate.h's Decoder) driven by lines on stdin, one reply
// line each on stdout, so that a caller can time the C++ path step for step (eas/bench/cpp.py).
// Prompts are token ids, laid out raw: positions 0.., every slot visible (no BOS is added and no
// tokenizer is read). Commands:
//   prefill SLOTS ID...   prefill the ids into K/V buffers of SLOTS slots -> the greedy next token
//   decode TOKEN STEPS    STEPS greedy steps from TOKEN                   -> the last token
//   kv                    -> bytes of the K/V buffers held
// "ready" is printed once the graphs are loaded. A malformed command ends the program with one
// "error: ..." line on stderr and exit status 2.
#include <iostream>
#include <sstream>

#include "cli.h"
#include "errors.h"
#include "generate.h"
#include "layout.h"
#include "manifest.h"
#include "runtime.h"

namespace {

constexpr const char* kUsage =
    "usage: eas_serve --engine DIR [--backend ort|trt] [--threads N]   (commands on stdin; see the source)\n"
    "  --engine DIR          export folder (manifest.json and its graphs or engines)\n"
    "  --backend ort|trt     ONNX Runtime on the CPU (default) or TensorRT engines on the GPU\n"
    "  --threads N           ONNX Runtime's threads (default: one per physical core)";

eas::Layout raw_layout(const std::vector<int64_t>& ids) {
    eas::Layout l;
    l.tokens = ids;
    for (size_t t = 0; t < ids.size(); ++t) l.positions.push_back(static_cast<int64_t>(t));
    l.key_mask.assign(ids.size(), true);
    l.prompt_mask.assign(ids.size(), true);
    l.modality_slot.assign(ids.size(), false);
    l.image_slots.assign(ids.size(), false);
    return l;
}

int64_t number(std::istringstream& in, const std::string& line, int64_t min) {
    int64_t value = 0;
    if (!(in >> value) || value < min)
        throw eas::InputError("command \"" + line + "\": expected integers of at least " + std::to_string(min));
    return value;
}

int serve_main(int argc, char** argv) {
    using namespace eas;
    const Flags flags = parse_flags(argc, argv, {"--engine", "--backend", "--threads"}, {});
    const Manifest manifest = load_manifest(flags.required("--engine"));
    auto runtime = make_runtime(flags.get("--backend", "ort"), manifest, flags.integer("--threads", 0, 1));
    Decoder decoder(*runtime, manifest);
    std::cout << "ready" << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string command;
        in >> command;
        if (command == "prefill") {
            const int64_t slots = number(in, line, 1);
            std::vector<int64_t> ids;
            while ((in >> std::ws, !in.eof())) ids.push_back(number(in, line, 0));
            if (ids.empty()) throw InputError("command \"" + line + "\": no token ids");
            std::cout << argmax(decoder.prefill(raw_layout(ids), std::nullopt, slots)) << std::endl;
        } else if (command == "decode") {
            int64_t token = number(in, line, 0);
            for (int64_t steps = number(in, line, 0); steps > 0; --steps) token = argmax(decoder.step(token));
            std::cout << token << std::endl;
        } else if (command == "kv") {
            std::cout << decoder.kv_bytes() << std::endl;
        } else {
            throw InputError("command \"" + line + "\": expected prefill, decode or kv");
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return eas::run_main(kUsage, argc, argv, serve_main); }
