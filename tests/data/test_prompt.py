"""The task prompt formats: the tuning prompts are their templates filled (the strings themselves are
pinned in test_data.py), and a user's question is wrapped, defaulted or sent raw as generate does."""
import pytest

from eas.data.aid import AID_FORMAT, AID_PROMPT
from eas.data.prompt import PromptFormat
from eas.data.scienceqa import SCIENCEQA_FORMAT, build_prompt
from eas.data.slake import SLAKE_FORMAT
from eas.errors import UsageError


def test_a_question_is_wrapped_as_the_tuning_prompts_were():
    assert AID_FORMAT.prompt(None) == AID_PROMPT
    assert AID_FORMAT.prompt("What is it?") == "Question: What is it?\nAnswer the question using a single word.\nResponse:"
    assert AID_FORMAT.prompt("a {b} c {question}") == ("Question: a {b} c {question}\nAnswer the question using a "
                                                        "single word.\nResponse:")  # braces in a question stay as typed
    assert AID_FORMAT.prompt("Question: x\nResponse:", raw=True) == "Question: x\nResponse:"
    assert SLAKE_FORMAT.prompt("Is it a CT?") == "Question: Is it a CT?\nResponse:"
    qcm = "Which is a noun?\nContext: N/A\nOptions: (A) run (B) dog"
    assert SCIENCEQA_FORMAT.prompt(qcm) == build_prompt("Which is a noun?", "", ["run", "dog"], 1, "", "")[0]
    assert (AID_FORMAT.max_new_tokens, SLAKE_FORMAT.max_new_tokens, SCIENCEQA_FORMAT.max_new_tokens) == (10, 10, 16)


def test_what_cannot_be_asked_is_refused():
    with pytest.raises(UsageError, match="tuned on slake, which has no question of its own: pass --prompt"):
        SLAKE_FORMAT.prompt(None)
    with pytest.raises(UsageError, match="--raw sends --prompt untouched"):
        AID_FORMAT.prompt(None, raw=True)
    with pytest.raises(ValueError, match="exactly once"):
        PromptFormat("t", "{question} and {question}", None, 4, "x")


def test_a_recorded_format_roundtrips_and_a_bad_one_is_named():
    assert PromptFormat.from_json(AID_FORMAT.to_json(), "m.pt") == AID_FORMAT
    for bad in (None, {**AID_FORMAT.to_json(), "extra": 1}, {**AID_FORMAT.to_json(), "max_new_tokens": "10"},
                {**AID_FORMAT.to_json(), "max_new_tokens": 0}):
        with pytest.raises(ValueError, match="^m.pt: "):
            PromptFormat.from_json(bad, "m.pt")
