// The tuned task's prompt format from the manifest's "prompt" section (eas/data/prompt.py): the
// user's question goes into the template's {question} slot, as the training prompts were built.
#pragma once

#include <optional>
#include <string>

namespace eas {

struct PromptFormat {
    std::string task;
    std::string templ;                    // holds "{question}" exactly once
    std::optional<std::string> question;  // the task's own question (AID), or none
    int max_new_tokens = 0;               // the task's answer budget, the default --max-new-tokens
};

// The text the model reads: the question in the template, the task's own question when none is
// given, or (raw) the question as typed. Mirrors PromptFormat.prompt in eas/data/prompt.py.
std::string prompt_text(const PromptFormat& format, const std::optional<std::string>& question, bool raw);

}  // namespace eas
