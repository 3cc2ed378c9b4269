// eas_preprocess: the app's image preprocessing alone, for checking it against Pillow/PyTorch.
// Writes the vision graph's pixels [3, S, S] as raw little-endian float32 to --out.
#include <fstream>

#include "cli.h"
#include "errors.h"
#include "image_decode.h"
#include "manifest.h"
#include "preprocess.h"

namespace {

constexpr const char* kUsage =
    "usage: eas_preprocess --engine DIR --image IMG --out FILE [--size S]\n"
    "  --engine DIR   export folder whose manifest's image section is applied\n"
    "  --size S       resize to S x S instead of the manifest's size";

int preprocess_main(int argc, char** argv) {
    using namespace eas;
    const Flags flags = parse_flags(argc, argv, {"--engine", "--image", "--out", "--size"}, {});
    const std::string folder = flags.required("--engine");
    const Manifest manifest = load_manifest(folder);
    if (!manifest.image) throw InputError(manifest.path + " has no image section (a text-only model)");
    ImageSpec spec = *manifest.image;
    spec.size = flags.integer("--size", spec.size, 1);
    const std::string out_path = flags.required("--out");
    const std::vector<float> pixels = preprocess(read_image(flags.required("--image")), spec);
    std::ofstream out(out_path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(pixels.data()), static_cast<std::streamsize>(pixels.size() * sizeof(float)));
    if (!out) throw InputError("cannot write " + out_path);
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return eas::run_main(kUsage, argc, argv, preprocess_main); }
