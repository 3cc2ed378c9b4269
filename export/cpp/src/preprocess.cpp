#include "preprocess.h"

#include "resample.h"

namespace eas {

std::vector<float> preprocess(const RgbImage& image, const ImageSpec& spec) {
    const RgbImage resized = resize_bicubic(image, spec.size, spec.size);
    const size_t plane = static_cast<size_t>(spec.size) * spec.size;
    // A division, as eas/model/image.py does: a multiply by float32(1/255) differs in the last bit.
    std::vector<float> out(3 * plane);
    for (size_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) {
            const float x = static_cast<float>(resized.pixels[3 * i + c]) / spec.divisor;
            out[c * plane + i] = (x - spec.mean[c]) / spec.std[c];
        }
    return out;
}

}  // namespace eas
