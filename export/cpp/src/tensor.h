// A host tensor: dtype, shape and bytes. Every backend takes and returns these, so the generation
// loop never sees backend types. Only the dtypes the exported graphs use exist.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace eas {

enum class DType { f32, f16, i64, boolean };

DType dtype_from_name(const std::string& name);  // the manifest's "float32", "float16", "int64", "bool"
std::string dtype_name(DType dtype);
size_t dtype_size(DType dtype);

struct Tensor {
    DType dtype = DType::f32;
    std::vector<int64_t> shape;
    std::vector<unsigned char> bytes;

    Tensor() = default;
    Tensor(DType dtype, std::vector<int64_t> shape);  // zero-filled

    size_t numel() const;
    template <typename T> T* data() { return reinterpret_cast<T*>(bytes.data()); }
    template <typename T> const T* data() const { return reinterpret_cast<const T*>(bytes.data()); }
    float get_float(size_t i) const;  // element i of a f32/f16 tensor as float
    std::string shape_string() const;
};

Tensor int64_tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape);
Tensor bool_tensor(const std::vector<bool>& values, std::vector<int64_t> shape);
// float32 values stored as `dtype` (f32, or f16 rounded to nearest even as numpy's astype does)
Tensor float_tensor(const std::vector<float>& values, std::vector<int64_t> shape, DType dtype);

uint16_t float_to_half(float value);
float half_to_float(uint16_t half);

}  // namespace eas
