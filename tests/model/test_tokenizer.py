"""SentencePiece wrapper: exact round trip, LLaMA special ids, clear errors for bad model files."""
import pytest
import sentencepiece as spm

from eas.errors import TokenizerError
from eas.model.tokenizer import CHUNK_CHARS, Tokenizer, _chunks, left_pad, train_tokenizer
from helpers import TOKENIZER_CORPUS


def test_special_ids_follow_llama(tok):
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.sp.pad_id(), tok.pad_id) == (0, 1, 2, -1, 0)
    assert tok.vocab_size == 400


@pytest.mark.parametrize("text", ["The answer is (B).", "Question: a  b\n\nContext: N/A\nResponse:",
                                  " leading space and tab\tand unseen ünïcødé ✓"])
def test_round_trip_and_bos_eos(tok, text):
    plain = tok.encode(text, bos=False, eos=False)
    assert tok.encode(text, bos=True, eos=True) == [1] + plain + [2]
    assert tok.encode(text, bos=True, eos=False) == [1] + plain
    assert tok.decode(plain) == text
    assert tok.decode([1] + plain + [2]) == text  # control pieces decode to nothing
    # The pieces are SentencePiece's own segmentation, not a re-implementation.
    assert plain == spm.SentencePieceProcessor(model_file=str(tok.path)).encode(text)


def test_newline_is_one_piece(tok):
    newline = tok.sp.piece_to_id("\n")
    assert not tok.sp.is_byte(newline) and tok.sp.id_to_piece(newline) == "\n"
    assert tok.encode("a\n\nb", False, False).count(newline) == 2


def test_missing_or_corrupt_model_names_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="nope.model"):
        Tokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"\x00junk" * 20)
    with pytest.raises(TokenizerError, match="junk.model"):
        Tokenizer(tmp_path / "junk.model")


def test_too_small_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="100-piece"):
        train_tokenizer(TOKENIZER_CORPUS, tmp_path / "small.model", vocab_size=100)
    assert list(tmp_path.iterdir()) == []  # no partial model file


def test_left_pad_aligns_prompts_on_the_right_with_masks(tok):
    texts = ["a longer prompt than the other one", "short"]
    ids = [tok.encode(t, bos=True, eos=False) for t in texts]
    tokens, positions, key_mask = left_pad(ids, tok.pad_id)
    T = max(map(len, ids))
    assert tokens.shape == positions.shape == key_mask.shape == (2, T)
    for row, seq in enumerate(ids):
        pad = T - len(seq)
        assert tokens[row, pad:].tolist() == seq and tokens[row, :pad].eq(tok.pad_id).all()
        assert key_mask[row].tolist() == [False] * pad + [True] * len(seq)
        assert positions[row, pad:].tolist() == list(range(len(seq)))
        assert tok.decode(tokens[row][key_mask[row]].tolist()) == texts[row]


def test_training_chunks_keep_every_line_and_fit_sentencepiece():
    lines = [f"line {i} " + "w" * (i % 7 * 90) for i in range(200)]
    chunks = _chunks("\n".join(lines))
    assert all(len(c) <= CHUNK_CHARS for c in chunks) and len(chunks) > 5
    assert "\n".join(chunks) == "\n".join(lines)  # cut between lines only
    assert _chunks("x" * (2 * CHUNK_CHARS + 5)) == ["x" * CHUNK_CHARS] * 2 + ["x" * 5]


def test_long_documents_are_learnt_not_skipped(tmp_path):
    # One 20k-character document is all the text: SentencePiece would drop it whole if it were a
    # single sentence, and the frequent word could then only be spelled in bytes.
    document = "\n".join(["zebrafinch quokka"] * 1200)
    tok = train_tokenizer([document], tmp_path / "long.model", vocab_size=300)
    assert len(tok.encode("zebrafinch", False, False)) <= 2
