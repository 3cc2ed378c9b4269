#include "prompt.h"

#include "errors.h"

namespace eas {

namespace {
constexpr const char* kSlot = "{question}";
}

std::string prompt_text(const PromptFormat& format, const std::optional<std::string>& question, bool raw) {
    if (raw) {
        if (!question) throw InputError("--raw sends --prompt untouched: pass --prompt");
        return *question;
    }
    const std::optional<std::string>& asked = question ? question : format.question;
    if (!asked)
        throw InputError("the model was tuned on " + format.task +
                         ", which has no question of its own: pass --prompt (it fills the template)");
    // A plain replacement of the one slot (as Python's str.replace): braces in the question stay as typed.
    std::string text = format.templ;
    text.replace(text.find(kSlot), std::string(kSlot).size(), *asked);
    return text;
}

}  // namespace eas
