// Greedy generation over the export's graphs, as export/ort_runtime.py does it at batch 1:
// embed -> (vision, image tokens copied into their slots) -> prefill -> decode steps. The prefill's
// K/V go into buffers of prompt + answer slots; each step feeds the previous step's present K/V as
// past, the slot it writes (length), the key_mask of the filled slots and the prefill's adapter
// tensors unchanged. Stops at EOS (not returned) or after max_new_tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "layout.h"
#include "manifest.h"
#include "runtime.h"

namespace eas {

// The prefill and decode steps of one prompt, on the state the manifest describes: K/V buffers of
// `slots` slots (prompt + answer), each step writing its slot in place (Runtime::run_into), the
// adapter tensors passed unchanged. generate() below and eas_serve drive it.
class Decoder {
public:
    Decoder(Runtime& runtime, const Manifest& manifest);
    // pixels: [3, S, S] float32 from preprocess(), or none for a text-only prompt; returns the
    // logits of the prompt's last slot
    const Tensor& prefill(const Layout& layout, const std::optional<std::vector<float>>& pixels, int64_t slots);
    const Tensor& step(int64_t token);  // the logits after `token`, written into the next free slot
    size_t kv_bytes() const;            // of the K/V buffers held

private:
    Runtime& runtime_;
    const Manifest& manifest_;
    Tensors past_, adapters_;  // by decode input name
    std::map<std::string, std::string> into_;  // each present K/V is written into its past buffer
    std::vector<bool> key_mask_;
    int64_t length_ = 0, position_ = 0;  // the slot the next step writes, and its position
    Tensor logits_;
};

int64_t argmax(const Tensor& logits);  // the first of equal maxima, as numpy's argmax

std::vector<int64_t> generate(Runtime& runtime, const Manifest& manifest, const Layout& layout,
                              const std::optional<std::vector<float>>& pixels, int max_new_tokens);

}  // namespace eas
