#include "image_decode.h"

#include <jpeglib.h>
#include <jerror.h>  // after jpeglib.h: the message codes (JWRN_JPEG_EOF)
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include "errors.h"

namespace eas {
namespace {

struct FileCloser {
    void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

// libjpeg reports errors through error_exit, which must not return: jump back to the decoder.
struct JpegError {
    jpeg_error_mgr mgr;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<JpegError*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
}

// Warnings are ignored except a truncated file, which Pillow refuses ("image file is truncated")
// where libjpeg would pad the missing rows with gray.
void jpeg_warning(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        auto* err = reinterpret_cast<JpegError*>(cinfo->err);
        std::snprintf(err->message, sizeof err->message, "the file is truncated");
        std::longjmp(err->jump, 1);
    }
}

// Fills `out` (already sized 0) or returns false with err->message set; no C++ objects with
// destructors live across the setjmp.
bool decode_jpeg(FILE* file, RgbImage* out, JpegError* err, bool* cmyk) {
    jpeg_decompress_struct cinfo;
    cinfo.err = jpeg_std_error(&err->mgr);
    err->mgr.error_exit = jpeg_error_exit;
    err->mgr.emit_message = jpeg_warning;
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return false;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, file);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        *cmyk = true;
        jpeg_destroy_decompress(&cinfo);
        return false;
    }
    const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
    cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    out->width = static_cast<int>(cinfo.output_width);
    out->height = static_cast<int>(cinfo.output_height);
    out->pixels.resize(static_cast<size_t>(out->width) * out->height * 3);
    const size_t channels = gray ? 1 : 3;
    while (cinfo.output_scanline < cinfo.output_height) {
        uint8_t* row = out->pixels.data() + static_cast<size_t>(cinfo.output_scanline) * out->width * 3;
        // a gray row is read into the end of its RGB row, then spread out front to back
        uint8_t* target = row + (3 - channels) * out->width;
        jpeg_read_scanlines(&cinfo, &target, 1);
        if (gray)
            for (int x = 0; x < out->width; ++x) row[3 * x] = row[3 * x + 1] = row[3 * x + 2] = target[x];
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return true;
}

struct PngError {
    std::jmp_buf jump;
    char message[200];
};

void png_error_fn(png_structp png, png_const_charp message) {
    auto* err = static_cast<PngError*>(png_get_error_ptr(png));
    std::snprintf(err->message, sizeof err->message, "%s", message);
    std::longjmp(err->jump, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

bool decode_png(FILE* file, RgbImage* out, PngError* err) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, err, png_error_fn, png_warning_fn);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) {
        std::snprintf(err->message, sizeof err->message, "out of memory");
        png_destroy_read_struct(&png, nullptr, nullptr);
        return false;
    }
    // volatile: assigned after setjmp and freed after a longjmp back to it
    std::vector<png_bytep>* volatile rows = nullptr;
    std::vector<uint8_t>* volatile buffer = nullptr;
    if (setjmp(err->jump)) {
        delete rows;
        delete buffer;
        png_destroy_read_struct(&png, &info, nullptr);
        return false;
    }
    png_init_io(png, file);
    png_read_info(png, info);
    const int color = png_get_color_type(png, info);
    const int depth = png_get_bit_depth(png, info);
    const bool gray16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (!gray16) {
        if (depth == 16) png_set_strip_16(png);
        if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
        if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
        png_set_strip_alpha(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes != width * (gray16 ? 2u : 3u))
        png_error(png, "unexpected row size after conversion to RGB");
    buffer = new std::vector<uint8_t>(rowbytes * height);
    rows = new std::vector<png_bytep>(height);
    for (png_uint_32 y = 0; y < height; ++y) (*rows)[y] = buffer->data() + y * rowbytes;
    png_read_image(png, rows->data());
    png_read_end(png, nullptr);
    out->width = static_cast<int>(width);
    out->height = static_cast<int>(height);
    if (gray16) {  // big-endian samples clipped at 255, as Pillow converts I;16 to RGB
        out->pixels.resize(static_cast<size_t>(width) * height * 3);
        for (size_t i = 0; i < static_cast<size_t>(width) * height; ++i) {
            const unsigned value = ((*buffer)[2 * i] << 8) | (*buffer)[2 * i + 1];
            out->pixels[3 * i] = out->pixels[3 * i + 1] = out->pixels[3 * i + 2] = value > 255 ? 255 : value;
        }
    } else {
        out->pixels = std::move(*buffer);
    }
    delete rows;
    delete buffer;
    png_destroy_read_struct(&png, &info, nullptr);
    return true;
}

}  // namespace

RgbImage read_image(const std::string& path) {
    File file(std::fopen(path.c_str(), "rb"));
    if (!file) throw InputError("cannot read image " + path + ": " + std::strerror(errno));
    unsigned char magic[8] = {};
    const size_t got = std::fread(magic, 1, sizeof magic, file.get());
    std::rewind(file.get());
    RgbImage image;
    if (got >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) {
        JpegError err{};
        bool cmyk = false;
        if (!decode_jpeg(file.get(), &image, &err, &cmyk))
            throw InputError("cannot read image " + path + ": " +
                             (cmyk ? std::string("CMYK JPEG is not supported (convert it to RGB)") : err.message));
    } else if (got == 8 && png_sig_cmp(magic, 0, 8) == 0) {
        PngError err{};
        if (!decode_png(file.get(), &image, &err)) throw InputError("cannot read image " + path + ": " + err.message);
    } else {
        throw InputError("cannot read image " + path + ": not a JPEG or PNG file");
    }
    if (image.width < 1 || image.height < 1) throw InputError("cannot read image " + path + ": it is empty");
    return image;
}

}  // namespace eas
