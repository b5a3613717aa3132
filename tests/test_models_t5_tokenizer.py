"""SentencePiece tokenizers with T5's conventions: round trips, sentinel ids, EOS / truncation /
padding, the vocabulary registry (--vocab, $PLEXBENCH_T5_VOCAB) and the shipped `fortunes` vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.models import tokenizer as tk
from plexbench.models.zoo_t5 import VOCAB_PIECES, embedding_rows, label_token_ids

TEXTS = [
    "Computers are useless.  They can only give you answers.\n\t\t-- Pablo Picasso",
    "Beam me up, Scotty! It ate my phaser!",
    "The law is the last result of human wisdom acting upon human experience.",
    "I like pizza, pasta and bread; they are food.",
] * 20


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "small.spm"
    return tk.train_vocab(TEXTS, path, vocab_size=60), path


def test_round_trip_equals_whitespace_normalised_text(small_vocab):
    tok, _ = small_vocab
    for text in TEXTS[:4]:
        assert tok.decode(tok.encode(text)) == " ".join(text.split())
    ids = tok.encode(TEXTS[1])
    assert tok.encode(tok.decode(ids)) == ids


def test_sentinels_are_counted_down_after_the_pieces(small_vocab):
    tok, _ = small_vocab
    assert tok.num_pieces == 60 and tok.vocab_size == 160
    assert tok.extra_id(0) == 159 and tok.extra_id(99) == 60
    assert tok.token_id("<extra_id_1>") == 158
    assert tok.decode([tok.extra_id(0)] + tok.encode("food") + [tk.EOS_ID, 0, 0]) == "<extra_id_0>food"
    with pytest.raises(PlexbenchError, match="<extra_id_100>"):
        tok.extra_id(100)
    with pytest.raises(PlexbenchError, match="not in vocabulary"):
        tok.token_id("zzzzqqq")
    # the official vocabulary's numbers follow from the same rule
    assert (32000 + 100 - 1 - 0, 32000 + 100 - 1 - 1) == (32099, 32098)
    assert embedding_rows(32000) == 32128


def test_encode_batch_appends_eos_truncates_and_pads(small_vocab):
    tok, _ = small_vocab
    long_ids = tok.encode(TEXTS[0])
    assert len(long_ids) > 8
    batch = tok.encode_batch([TEXTS[0], "food"], 8)
    assert batch.dtype == np.int32 and batch.shape == (2, 8)
    np.testing.assert_array_equal(batch[0], long_ids[:7] + [tk.EOS_ID])
    short = tok.encode("food")
    np.testing.assert_array_equal(batch[1], short + [tk.EOS_ID] + [0] * (7 - len(short)))
    with pytest.raises(PlexbenchError, match="room for EOS"):
        tok.encode_batch(["x"], 1)


def test_training_is_deterministic_and_ids_are_t5s(small_vocab, tmp_path):
    tok, path = small_vocab
    again = tk.train_vocab(TEXTS, tmp_path / "again.spm", vocab_size=60)
    assert (tmp_path / "again.spm").read_bytes() == path.read_bytes() and again.sha256 == tok.sha256
    import sentencepiece as spm

    other = tmp_path / "default_ids"
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(TEXTS), model_prefix=str(other), vocab_size=60, minloglevel=2)
    with pytest.raises(PlexbenchError, match="pad/eos/unk ids"):
        tk.Tokenizer((tmp_path / "default_ids.model").read_bytes())
    with pytest.raises(PlexbenchError, match="not a SentencePiece model"):
        tk.Tokenizer(b"not a model")


def test_t5_vocab_lookup_order(small_vocab, tmp_path, monkeypatch):
    _, path = small_vocab
    monkeypatch.delenv(tk.T5_VOCAB_ENV, raising=False)
    monkeypatch.setattr(tk, "_REGISTERED", {})
    with pytest.raises(PlexbenchError, match="cc_all.32000.100extra") as e:
        tk.vocab_path("t5")
    assert "--vocab PATH" in str(e.value)
    monkeypatch.setenv(tk.T5_VOCAB_ENV, str(path))
    assert tk.vocab_path("t5") == path
    assert tk.get_tokenizer("t5").num_pieces == 60
    monkeypatch.setenv(tk.T5_VOCAB_ENV, str(tmp_path / "nope"))
    with pytest.raises(PlexbenchError, match="not a file"):
        tk.vocab_path("t5")
    tk.register_vocab_file("t5", path)  # --vocab wins over the environment
    assert tk.vocab_path("t5") == path.resolve()
    with pytest.raises(PlexbenchError, match="unknown vocabulary 'x5'"):
        tk.vocab_path("x5")


def test_shipped_fortunes_vocabulary_matches_the_zoo_configs():
    tok = tk.get_tokenizer("fortunes")
    assert tok.num_pieces == VOCAB_PIECES
    ids = tuple(tok.token_id(f"<extra_id_{k}>") for k in range(6))
    assert ids == label_token_ids()
    from plexbench.models.registry import get_model

    for name in ("t5-plex-mini", "t5-det-mini"):
        config = get_model(name).config
        assert config.label_tokens == ids and config.vocab_size == embedding_rows(tok.num_pieces) >= tok.vocab_size
