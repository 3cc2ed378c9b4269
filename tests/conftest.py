import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(2)

from eas.model.tokenizer import train_tokenizer  # noqa: E402
from helpers import TOKENIZER_CORPUS, TOKENIZER_VOCAB  # noqa: E402


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    """A small SentencePiece tokenizer, trained once per test session."""
    return train_tokenizer(TOKENIZER_CORPUS, tmp_path_factory.mktemp("tok") / "tiny.model", TOKENIZER_VOCAB)
