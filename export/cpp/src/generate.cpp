#include "generate.h"

#include <algorithm>
#include <cstring>

#include "errors.h"

namespace eas {
namespace {

// The inputs of `graph` in the manifest's order, taken by name from `available`.
Tensors feed(const Manifest& manifest, const std::string& graph, Tensors& available) {
    Tensors out;
    for (const TensorSpec& spec : manifest.graph(graph).inputs) {
        auto it = available.find(spec.name);
        if (it == available.end())
            throw InputError(manifest.path + ": graph " + graph + " has an input " + spec.name + " the app cannot supply");
        if (it->second.dtype != spec.dtype)
            throw InputError(manifest.path + ": graph " + graph + " input " + spec.name + " is declared " +
                             dtype_name(spec.dtype) + ", the app has " + dtype_name(it->second.dtype));
        out[spec.name] = std::move(it->second);
        available.erase(it);
    }
    return out;
}

Tensor take(Tensors& outputs, const std::string& graph, const std::string& name) {
    auto it = outputs.find(name);
    if (it == outputs.end()) throw RuntimeFailure("graph " + graph + " returned no " + name);
    return std::move(it->second);
}

// present K/V [B, H, T, D] from prefill -> a zeroed buffer of S >= T slots holding it in slots 0..T-1
Tensor pad_slots(const Tensor& kv, int64_t S) {
    const int64_t T = kv.shape.at(2);
    Tensor out(kv.dtype, {kv.shape[0], kv.shape[1], S, kv.shape[3]});
    const size_t row = kv.bytes.size() / static_cast<size_t>(kv.shape[0] * kv.shape[1]);  // T slots of one head
    const size_t out_row = row / static_cast<size_t>(T) * static_cast<size_t>(S);
    for (int64_t bh = 0; bh < kv.shape[0] * kv.shape[1]; ++bh)
        std::memcpy(out.bytes.data() + bh * out_row, kv.bytes.data() + bh * row, row);
    return out;
}

void check_limits(const Manifest& manifest, int64_t slots) {
    const int64_t most = manifest.profiles.at("seq")[2];
    if (slots > most)
        throw InputError("prompt and answer need " + std::to_string(slots) + " slots, more than the export's --max-seq " +
                         std::to_string(most));
}

// embeds [1, T, C] with the vision graph's image tokens in the layout's image slots
Tensor embed(Runtime& runtime, const Manifest& manifest, const Layout& layout,
             const std::optional<std::vector<float>>& pixels) {
    const int64_t T = layout.length();
    Tensors available{{"tokens", int64_tensor(layout.tokens, {1, T})},
                      {"modality_slot", bool_tensor(layout.modality_slot, {1, T})},
                      {"has_image", bool_tensor({layout.has_image}, {1})}};
    Tensors embed_out = runtime.run("embed", feed(manifest, "embed", available));
    Tensor embeds = take(embed_out, "embed", "embeds");
    if (!layout.has_image) return embeds;

    const TensorSpec& pixel_spec = manifest.graph("vision").inputs.at(0);
    const int64_t S = manifest.image->size;
    Tensors vision_in{{pixel_spec.name, float_tensor(*pixels, {1, 3, S, S}, pixel_spec.dtype)}};
    Tensors vision_out = runtime.run("vision", vision_in);
    const Tensor image = take(vision_out, "vision", manifest.graph("vision").outputs.at(0).name);
    const size_t row = embeds.bytes.size() / static_cast<size_t>(T);
    const int64_t n_slots = static_cast<int64_t>(std::count(layout.image_slots.begin(), layout.image_slots.end(), true));
    if (image.dtype != embeds.dtype || image.bytes.size() != row * static_cast<size_t>(n_slots))
        throw InputError(manifest.path + ": the vision graph returned " + image.shape_string() + " " +
                         dtype_name(image.dtype) + ", not " + std::to_string(n_slots) + " image tokens like embeds " +
                         embeds.shape_string() + " " + dtype_name(embeds.dtype));
    size_t k = 0;
    for (int64_t t = 0; t < T; ++t)
        if (layout.image_slots[t]) std::memcpy(embeds.bytes.data() + t * row, image.bytes.data() + (k++) * row, row);
    return embeds;
}

}  // namespace

int64_t argmax(const Tensor& logits) {
    int64_t best = 0;
    float best_value = logits.get_float(0);
    for (size_t i = 1; i < logits.numel(); ++i) {
        const float v = logits.get_float(i);
        if (v > best_value) {
            best_value = v;
            best = static_cast<int64_t>(i);
        }
    }
    return best;
}

Decoder::Decoder(Runtime& runtime, const Manifest& manifest) : runtime_(runtime), manifest_(manifest) {
    for (size_t i = 0; i < manifest.past.size(); ++i) into_[manifest.present[i]] = manifest.past[i];
}

const Tensor& Decoder::prefill(const Layout& layout, const std::optional<std::vector<float>>& pixels, int64_t slots) {
    const int64_t T = layout.length();
    if (layout.has_image != pixels.has_value()) throw RuntimeFailure("layout and pixels disagree about the image");
    if (slots < T) throw InputError("K/V buffers of " + std::to_string(slots) + " slots cannot hold a prompt of " +
                                        std::to_string(T));
    Tensors available{{"embeds", embed(runtime_, manifest_, layout, pixels)},
                      {"positions", int64_tensor(layout.positions, {1, T})},
                      {"key_mask", bool_tensor(layout.key_mask, {1, T})},
                      {"prompt_mask", bool_tensor(layout.prompt_mask, {1, T})}};
    Tensors result = runtime_.run("prefill", feed(manifest_, "prefill", available));
    // the manifest's state rule: K/V buffers of `slots` slots, slot T + n written by decode step n
    past_.clear();
    adapters_.clear();
    for (size_t i = 0; i < manifest_.past.size(); ++i)
        past_[manifest_.past[i]] = pad_slots(take(result, "prefill", manifest_.present[i]), slots);
    for (const std::string& name : manifest_.adapters) adapters_[name] = take(result, "prefill", name);
    key_mask_ = layout.key_mask;
    key_mask_.resize(static_cast<size_t>(slots), false);
    length_ = T;
    position_ = layout.positions.back() + 1;
    logits_ = take(result, "prefill", "logits");
    return logits_;
}

const Tensor& Decoder::step(int64_t token) {
    if (key_mask_.empty()) throw InputError("a decode step before any prefill");
    if (length_ >= static_cast<int64_t>(key_mask_.size()))
        throw InputError("all " + std::to_string(key_mask_.size()) + " K/V slots are written");
    key_mask_[static_cast<size_t>(length_)] = true;
    Tensors step_in;  // the state goes in by move and comes back below: no copy per step
    for (auto& [name, kv] : past_) step_in[name] = std::move(kv);
    for (auto& [name, t] : adapters_) step_in[name] = std::move(t);
    step_in["token"] = int64_tensor({token}, {1});
    step_in["position"] = int64_tensor({position_}, {1});
    step_in["length"] = int64_tensor({length_}, {});
    step_in["key_mask"] = bool_tensor(key_mask_, {1, static_cast<int64_t>(key_mask_.size())});
    Tensors fed = feed(manifest_, "decode", step_in);
    Tensors result = runtime_.run_into("decode", fed, into_);
    for (const std::string& name : manifest_.past) past_[name] = std::move(fed.at(name));
    for (const std::string& name : manifest_.adapters) adapters_[name] = std::move(fed.at(name));
    ++length_;
    ++position_;
    logits_ = take(result, "decode", "logits");
    return logits_;
}

size_t Decoder::kv_bytes() const {
    size_t n = 0;
    for (const auto& [name, kv] : past_) n += kv.bytes.size();
    return n;
}

std::vector<int64_t> generate(Runtime& runtime, const Manifest& manifest, const Layout& layout,
                              const std::optional<std::vector<float>>& pixels, int max_new_tokens) {
    const int64_t T = layout.length();
    check_limits(manifest, T + max_new_tokens);
    std::vector<int64_t> out;
    if (max_new_tokens <= 0) return out;
    Decoder decoder(runtime, manifest);
    const Tensor* logits = &decoder.prefill(layout, pixels, T + max_new_tokens - 1);
    for (int step = 0; step < max_new_tokens; ++step) {
        const int64_t token = argmax(*logits);
        if (token == manifest.eos_id) break;
        out.push_back(token);
        if (step == max_new_tokens - 1) break;
        logits = &decoder.step(token);
    }
    return out;
}

}  // namespace eas
