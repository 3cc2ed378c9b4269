// eas_generate: answer a prompt, optionally about an image, with an export folder written by
// `python export/to_trt.py merged.pt`, asking in the tuned task's prompt template. Prints the answer
// (or its token ids with --ids).
#include <iostream>

#include "cli.h"
#include "errors.h"
#include "generate.h"
#include "image_decode.h"
#include "layout.h"
#include "manifest.h"
#include "preprocess.h"
#include "prompt.h"
#include "runtime.h"
#include "tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: eas_generate --engine DIR [--prompt TEXT] [--raw] [--image IMG] [--backend ort|trt] [--max-new-tokens N] [--ids]\n"
    "                    [--threads N]\n"
    "  --engine DIR          export folder (manifest.json, graphs or engines, tokenizer.model)\n"
    "  --prompt TEXT         the question, wrapped in the tuned task's prompt template (manifest: prompt.format);\n"
    "                        default: the task's own question (e.g. AID's)\n"
    "  --raw                 send --prompt as typed, without the template\n"
    "  --image IMG           JPEG or PNG (LaVIN-style models only)\n"
    "  --backend ort|trt     ONNX Runtime on the CPU (default) or TensorRT engines on the GPU\n"
    "  --max-new-tokens N    most tokens to generate (default: the task's answer budget)\n"
    "  --ids                 print the generated token ids instead of the text\n"
    "  --threads N           ONNX Runtime's threads (default: one per physical core)";

int generate_main(int argc, char** argv) {
    using namespace eas;
    const Flags flags = parse_flags(argc, argv, {"--engine", "--prompt", "--image", "--backend", "--max-new-tokens", "--threads"},
                                    {"--ids", "--raw"});
    const std::string folder = flags.required("--engine");
    const Manifest manifest = load_manifest(folder);
    const std::optional<std::string> question =
        flags.has("--prompt") ? std::optional<std::string>(flags.get("--prompt", "")) : std::nullopt;
    const std::string prompt = prompt_text(manifest.prompt, question, flags.switches.count("--raw") > 0);
    const int max_new_tokens = flags.integer("--max-new-tokens", manifest.prompt.max_new_tokens, 0);
    if (flags.has("--image") && !manifest.sequence.lavin)
        throw InputError("--image: the model in " + folder + " is text-only (its manifest has no image section)");
    const Tokenizer tokenizer(manifest.file_path(manifest.tokenizer_file));

    std::optional<std::vector<float>> pixels;
    if (flags.has("--image")) pixels = preprocess(read_image(flags.get("--image", "")), *manifest.image);
    const Layout layout = build_layout(manifest.sequence, tokenizer.encode(prompt), pixels.has_value());
    auto runtime = make_runtime(flags.get("--backend", "ort"), manifest, flags.integer("--threads", 0, 1));
    const std::vector<int64_t> ids = generate(*runtime, manifest, layout, pixels, max_new_tokens);
    if (flags.switches.count("--ids")) {
        for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
        std::cout << "\n";
    } else {
        std::cout << tokenizer.decode(ids) << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return eas::run_main(kUsage, argc, argv, generate_main); }
