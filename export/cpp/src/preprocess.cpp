#include "preprocess.h"

#include "resample.h"

namespace eas {

std::vector<float> preprocess(const RgbImage& image, const ImageSpec& spec) {
    const RgbImage resized = resize_bicubic(image, spec.size, spec.size);
    const size_t plane = static_cast<size_t>(spec.size) * spec.size;
    // Divide by 255 (as numpy's x / 255.0 on float32) rather than multiply by the manifest's
    // scale: float32(1/255) is inexact, and the product differs from the quotient in the last bit.
    const float divisor = static_cast<float>(1.0 / spec.scale);
    std::vector<float> out(3 * plane);
    for (size_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) {
            const float x = static_cast<float>(resized.pixels[3 * i + c]) / divisor;
            out[c * plane + i] = (x - spec.mean[c]) / spec.std[c];
        }
    return out;
}

}  // namespace eas
