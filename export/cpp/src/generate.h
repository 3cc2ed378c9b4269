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

// pixels: [3, S, S] float32 from preprocess(), or none for a text-only prompt
std::vector<int64_t> generate(Runtime& runtime, const Manifest& manifest, const Layout& layout,
                              const std::optional<std::vector<float>>& pixels, int max_new_tokens);

}  // namespace eas
