#include "tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>

#include "errors.h"

namespace eas {

Tokenizer::Tokenizer(const std::string& path) : path_(path), sp_(new sentencepiece::SentencePieceProcessor) {
    if (!std::filesystem::is_regular_file(path)) throw InputError("tokenizer model " + path + " does not exist");
    const auto status = sp_->Load(path);
    if (!status.ok()) throw InputError(path + " is not a readable SentencePiece model: " + status.ToString());
}

Tokenizer::~Tokenizer() = default;

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
    std::vector<int> ids;
    const auto status = sp_->Encode(text, &ids);
    if (!status.ok()) throw InputError("cannot encode the prompt with " + path_ + ": " + status.ToString());
    return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
    std::vector<int> pieces(ids.begin(), ids.end());
    std::string text;
    const auto status = sp_->Decode(pieces, &text);
    if (!status.ok()) throw RuntimeFailure("cannot decode tokens with " + path_ + ": " + status.ToString());
    return text;
}

}  // namespace eas
