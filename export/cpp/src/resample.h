// Pillow's Image.resize(size, Image.BICUBIC) on an 8-bit RGB image, bit for bit (libImaging/
// Resample.c): a separable cubic filter (a = -0.5) whose support widens by the downscale factor
// (antialiasing), coefficients rounded to 22-bit fixed point, a horizontal pass into an 8-bit
// image, then a vertical pass.
#pragma once

#include "image_decode.h"

namespace eas {

RgbImage resize_bicubic(const RgbImage& image, int width, int height);

}  // namespace eas
