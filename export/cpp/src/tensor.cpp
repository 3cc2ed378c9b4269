#include "tensor.h"

#include <cstring>
#include <sstream>

#include "errors.h"

namespace eas {

DType dtype_from_name(const std::string& name) {
    if (name == "float32") return DType::f32;
    if (name == "float16") return DType::f16;
    if (name == "int64") return DType::i64;
    if (name == "bool") return DType::boolean;
    throw InputError("unknown tensor dtype \"" + name + "\" (expected float32, float16, int64 or bool)");
}

std::string dtype_name(DType dtype) {
    switch (dtype) {
        case DType::f32: return "float32";
        case DType::f16: return "float16";
        case DType::i64: return "int64";
        case DType::boolean: return "bool";
    }
    return "?";
}

size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::f32: return 4;
        case DType::f16: return 2;
        case DType::i64: return 8;
        case DType::boolean: return 1;
    }
    return 0;
}

Tensor::Tensor(DType dtype_, std::vector<int64_t> shape_) : dtype(dtype_), shape(std::move(shape_)) {
    bytes.assign(numel() * dtype_size(dtype), 0);
}

size_t Tensor::numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

float Tensor::get_float(size_t i) const {
    if (dtype == DType::f32) return data<float>()[i];
    if (dtype == DType::f16) return half_to_float(data<uint16_t>()[i]);
    throw RuntimeFailure("a " + dtype_name(dtype) + " tensor read as floating point");
}

std::string Tensor::shape_string() const {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

Tensor int64_tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape) {
    Tensor t(DType::i64, std::move(shape));
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
    return t;
}

Tensor bool_tensor(const std::vector<bool>& values, std::vector<int64_t> shape) {
    Tensor t(DType::boolean, std::move(shape));
    for (size_t i = 0; i < values.size(); ++i) t.bytes[i] = values[i] ? 1 : 0;
    return t;
}

Tensor float_tensor(const std::vector<float>& values, std::vector<int64_t> shape, DType dtype) {
    Tensor t(dtype, std::move(shape));
    if (dtype == DType::f32) {
        std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
    } else if (dtype == DType::f16) {
        for (size_t i = 0; i < values.size(); ++i) t.data<uint16_t>()[i] = float_to_half(values[i]);
    } else {
        throw RuntimeFailure("float values stored as " + dtype_name(dtype));
    }
    return t;
}

// numpy's npy_floatbits_to_halfbits: round to nearest even, overflow to inf, underflow through
// the subnormals to zero.
uint16_t float_to_half(float value) {
    uint32_t f;
    std::memcpy(&f, &value, 4);
    const uint16_t sign = static_cast<uint16_t>((f & 0x80000000u) >> 16);
    uint32_t f_exp = f & 0x7f800000u;
    uint32_t f_sig = f & 0x007fffffu;
    if (f_exp >= 0x47800000u) {
        if (f_exp == 0x7f800000u && f_sig != 0) {  // nan stays nan
            uint16_t nan = static_cast<uint16_t>(0x7c00u + (f_sig >> 13));
            return static_cast<uint16_t>(sign + (nan == 0x7c00u ? nan + 1 : nan));
        }
        return static_cast<uint16_t>(sign + 0x7c00u);
    }
    if (f_exp <= 0x38000000u) {
        if (f_exp < 0x33000000u) return sign;
        f_exp >>= 23;
        f_sig += 0x00800000u;
        f_sig >>= (113 - f_exp);
        if ((f_sig & 0x00003fffu) != 0x00001000u || (f & 0x000007ffu)) f_sig += 0x00001000u;
        return static_cast<uint16_t>(sign + (f_sig >> 13));
    }
    const uint32_t h_exp = (f_exp - 0x38000000u) >> 13;
    if ((f_sig & 0x00003fffu) != 0x00001000u) f_sig += 0x00001000u;
    // a rounding carry out of the significand lands in the exponent, as it should
    return static_cast<uint16_t>(sign + h_exp + (f_sig >> 13));
}

float half_to_float(uint16_t half) {
    const uint32_t sign = (half & 0x8000u) << 16;
    uint32_t exponent = (half >> 10) & 0x1fu;
    uint32_t mantissa = half & 0x3ffu;
    uint32_t f;
    if (exponent == 0x1f) {
        f = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
        if (mantissa == 0) {
            f = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do { mantissa <<= 1; ++e; } while (!(mantissa & 0x400u));
            f = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mantissa & 0x3ffu) << 13);
        }
    } else {
        f = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float value;
    std::memcpy(&value, &f, 4);
    return value;
}

}  // namespace eas
