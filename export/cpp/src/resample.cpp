#include "resample.h"

#include <cmath>

namespace eas {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kSupport = 2.0;

double bicubic(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

// For each output pixel along one axis: the first input pixel, how many are read, and their
// fixed-point weights (precompute_coeffs + normalize_coeffs_8bpc).
struct Coefficients {
    int ksize = 0;
    std::vector<int> first, count;
    std::vector<int32_t> weights;  // out_size x ksize
};

Coefficients precompute(int in_size, int out_size) {
    const double scale = static_cast<double>(in_size) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = kSupport * filterscale;
    Coefficients c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.first.resize(out_size);
    c.count.resize(out_size);
    c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> k(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            k[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double w = ww != 0.0 ? k[x] / ww : k[x];
            const double fixed = w * (1 << kPrecisionBits);
            c.weights[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(w < 0 ? -0.5 + fixed : 0.5 + fixed);
        }
        c.first[xx] = xmin;
        c.count[xx] = xmax;
    }
    return c;
}

uint8_t clip8(int value) {
    if (value >= (1 << kPrecisionBits << 8)) return 255;
    if (value <= 0) return 0;
    return static_cast<uint8_t>(value >> kPrecisionBits);
}

// One axis: out(o) = sum_k in(first[o] + k) * w[o][k], over `lines` lines of `in` whose pixels
// along the axis are `step` bytes apart and whose lines start `line_step` bytes apart.
void resample_axis(const uint8_t* in, uint8_t* out, const Coefficients& c, int out_size, int lines,
                   size_t in_step, size_t in_line_step, size_t out_step, size_t out_line_step) {
    for (int line = 0; line < lines; ++line) {
        const uint8_t* src = in + line * in_line_step;
        uint8_t* dst = out + line * out_line_step;
        for (int o = 0; o < out_size; ++o) {
            const int32_t* w = &c.weights[static_cast<size_t>(o) * c.ksize];
            int sum[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
            for (int k = 0; k < c.count[o]; ++k) {
                const uint8_t* p = src + (c.first[o] + k) * in_step;
                for (int ch = 0; ch < 3; ++ch) sum[ch] += p[ch] * w[k];
            }
            for (int ch = 0; ch < 3; ++ch) dst[o * out_step + ch] = clip8(sum[ch]);
        }
    }
}

}  // namespace

RgbImage resize_bicubic(const RgbImage& image, int width, int height) {
    // Image.resize returns a copy when the size already matches
    if (image.width == width && image.height == height) return image;
    const Coefficients horizontal = precompute(image.width, width);
    const Coefficients vertical = precompute(image.height, height);
    // the horizontal pass covers only the rows the vertical pass reads
    const int row_first = vertical.first[0];
    const int row_last = vertical.first[height - 1] + vertical.count[height - 1];
    const uint8_t* source = image.pixels.data() + static_cast<size_t>(row_first) * image.width * 3;
    int rows = image.height;
    int first_offset = 0;

    RgbImage temp;
    const bool need_horizontal = width != image.width;
    const bool need_vertical = height != image.height;
    if (need_horizontal) {
        rows = row_last - row_first;
        temp.width = width;
        temp.height = rows;
        temp.pixels.resize(static_cast<size_t>(width) * rows * 3);
        resample_axis(source, temp.pixels.data(), horizontal, width, rows, 3, static_cast<size_t>(image.width) * 3, 3,
                      static_cast<size_t>(width) * 3);
        first_offset = row_first;  // vertical bounds are relative to the rows kept
    }
    if (!need_vertical) return temp;
    const RgbImage& in = need_horizontal ? temp : image;
    Coefficients shifted = vertical;
    for (int& f : shifted.first) f -= first_offset;
    RgbImage out;
    out.width = in.width;
    out.height = height;
    out.pixels.resize(static_cast<size_t>(in.width) * height * 3);
    // columns are the lines here: pixels along the axis are a row apart
    resample_axis(in.pixels.data(), out.pixels.data(), shifted, height, in.width, static_cast<size_t>(in.width) * 3, 3,
                  static_cast<size_t>(in.width) * 3, 3);
    return out;
}

}  // namespace eas
