// JPEG and PNG files -> 8-bit RGB, as Pillow's Image.open(path).convert("RGB") gives them.
//
// JPEG goes through libjpeg-turbo with Pillow's settings (libjpeg's defaults: islow IDCT, fancy
// upsampling); grayscale is replicated to RGB; CMYK is refused. PNG goes through libpng with the
// transforms that give Pillow's modes: palettes looked up, 1/2/4-bit gray scaled to 8 bits,
// 16-bit colour cut to its high byte, 16-bit gray clipped at 255 (Pillow's I;16 -> RGB), alpha
// and tRNS dropped, no gamma applied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace eas {

struct RgbImage {
    int width = 0, height = 0;
    std::vector<uint8_t> pixels;  // row-major, interleaved R, G, B
};

RgbImage read_image(const std::string& path);

}  // namespace eas
