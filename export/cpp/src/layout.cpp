#include "layout.h"

#include "errors.h"

namespace eas {

Layout build_layout(const SequenceSpec& sequence, const std::vector<int64_t>& prompt_ids, bool has_image) {
    if (has_image && !sequence.lavin) throw InputError("a text-only model takes no --image");
    Layout l;
    l.has_image = has_image;
    size_t image_start = 0, n_image = 0;
    if (sequence.lavin) {
        const auto& prefix = has_image ? sequence.prefix_image : sequence.prefix_text;
        l.tokens = {sequence.slot_id, sequence.bos_id};
        l.tokens.insert(l.tokens.end(), prefix.begin(), prefix.end());
        image_start = l.tokens.size();
        n_image = has_image ? static_cast<size_t>(sequence.n_image_tokens) : 0;
        l.tokens.insert(l.tokens.end(), n_image, sequence.slot_id);
    } else {
        l.tokens = {sequence.bos_id};
    }
    l.tokens.insert(l.tokens.end(), prompt_ids.begin(), prompt_ids.end());
    const size_t T = l.tokens.size();
    l.positions.resize(T);
    l.modality_slot.assign(T, false);
    l.image_slots.assign(T, false);
    l.prompt_mask.assign(T, true);
    l.key_mask.assign(T, true);
    for (size_t t = 0; t < T; ++t) l.positions[t] = static_cast<int64_t>(t);
    if (sequence.lavin) {
        l.modality_slot[0] = true;
        l.key_mask[0] = false;
    }
    for (size_t t = image_start; t < image_start + n_image; ++t) l.image_slots[t] = true;
    return l;
}

}  // namespace eas
