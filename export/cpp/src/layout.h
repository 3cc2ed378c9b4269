// The prompt layout of one example, from the manifest's "sequence" section (export/layout.py at
// batch 1, so no padding):
//   LaVIN      [modality | BOS | prefix ids | image slots (with an image) | prompt ids]
//   text-only  [BOS | prompt ids]
// positions count 0.. from the first slot; key_mask hides the modality slot; prompt_mask is all
// slots; tokens hold slot_id at the modality and image slots.
#pragma once

#include <cstdint>
#include <vector>

#include "manifest.h"

namespace eas {

struct Layout {
    std::vector<int64_t> tokens, positions;
    std::vector<bool> key_mask, prompt_mask, modality_slot, image_slots;
    bool has_image = false;
    int64_t length() const { return static_cast<int64_t>(tokens.size()); }
};

Layout build_layout(const SequenceSpec& sequence, const std::vector<int64_t>& prompt_ids, bool has_image);

}  // namespace eas
