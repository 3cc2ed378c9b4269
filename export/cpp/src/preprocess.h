// An RGB image -> the vision graph's pixels [3, S, S], as eas/model/image.py computes them:
// Pillow bicubic resize to S x S, then (pixel / 255 - mean[c]) / std[c] in float32.
#pragma once

#include <vector>

#include "image_decode.h"
#include "manifest.h"

namespace eas {

std::vector<float> preprocess(const RgbImage& image, const ImageSpec& spec);

}  // namespace eas
