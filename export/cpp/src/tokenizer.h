// The export's SentencePiece model (Debian's libsentencepiece): prompts are encoded on their own,
// without BOS/EOS, as eas/model/tokenizer.py's Tokenizer.encode(text, bos=False, eos=False).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace eas {

class Tokenizer {
public:
    explicit Tokenizer(const std::string& path);
    ~Tokenizer();
    std::vector<int64_t> encode(const std::string& text) const;
    std::string decode(const std::vector<int64_t>& ids) const;

private:
    std::string path_;
    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace eas
