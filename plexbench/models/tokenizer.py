"""SentencePiece tokenizers with T5's conventions, and the registry of vocabularies (spec §9).

T5 conventions: id 0 = padding (also the decoder's start token), 1 = end of sequence (EOS),
2 = unknown; the SentencePiece model's n pieces take ids 0..n-1 and `extra_ids` sentinel tokens
follow them, counted DOWN from the end: `<extra_id_k>` = n + extra_ids - 1 - k. With the
official vocabulary (`cc_all.32000.100extra`: n = 32000, extra_ids = 100) `<extra_id_0>` is
32099 and `<extra_id_1>` 32098; the model's embedding has 32128 rows (32100 padded to a
multiple of 128). An input is encoded as its pieces, truncated to length - 1, then EOS, then
padding to `length` (T5's "append EOS after trimming").

Vocabularies are named (so a preprocessing spec like `tokenize(t5,512)` names one):
- `t5`: the official T5 vocabulary, which users download with the checkpoints
  (gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model); plexbench finds it through
  `register_vocab_file("t5", PATH)` (the `--vocab PATH` option) or $PLEXBENCH_T5_VOCAB.
- `fortunes`: a 1,000-piece unigram vocabulary trained on the `fortunes` training texts
  (plexbench.models.zoo_t5), shipped in plexbench/models/zoo_weights/fortunes.spm.
A tokenizer's identity is the sha256 of its model file plus extra_ids (it goes into store keys).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.registry import unknown_name_message

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
T5_EXTRA_IDS = 100
T5_VOCAB_ENV = "PLEXBENCH_T5_VOCAB"
T5_VOCAB_SOURCE = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
ZOO_DIR = Path(__file__).resolve().parent / "zoo_weights"

# name -> (default file or None, extra ids, environment variable or None)
VOCABS: dict[str, tuple[Path | None, int, str | None]] = {
    "t5": (None, T5_EXTRA_IDS, T5_VOCAB_ENV),
    "fortunes": (ZOO_DIR / "fortunes.spm", T5_EXTRA_IDS, None),
}
_REGISTERED: dict[str, Path] = {}


class Tokenizer:
    """A SentencePiece model with T5's id conventions (module docstring).

    model_bytes: the serialized SentencePiece model (a `.model` / `.spm` file's bytes).
    """

    def __init__(self, model_bytes: bytes, extra_ids: int = T5_EXTRA_IDS, name: str = "vocab"):
        import sentencepiece as spm

        self.name = name
        self.extra_ids = int(extra_ids)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise PlexbenchError(f"vocabulary '{name}' is not a SentencePiece model ({e})") from None
        self.num_pieces = int(self._sp.GetPieceSize())
        ids = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id())
        if ids != (PAD_ID, EOS_ID, UNK_ID):
            raise PlexbenchError(f"vocabulary '{name}' has pad/eos/unk ids {ids}; T5 needs (0, 1, 2)")
        self.sha256 = hashlib.sha256(model_bytes + f"|extra_ids={self.extra_ids}".encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Pieces + sentinels (32100 for T5); the embedding may have more rows (padding)."""
        return self.num_pieces + self.extra_ids

    def extra_id(self, k: int) -> int:
        """Id of `<extra_id_k>`: num_pieces + extra_ids - 1 - k."""
        if not 0 <= k < self.extra_ids:
            raise PlexbenchError(f"<extra_id_{k}> is not in vocabulary '{self.name}' ({self.extra_ids} sentinels)")
        return self.num_pieces + self.extra_ids - 1 - k

    def token_id(self, piece: str) -> int:
        """Id of a piece (`<extra_id_k>` included); PlexbenchError if it is unknown."""
        if piece.startswith("<extra_id_") and piece.endswith(">"):
            return self.extra_id(int(piece[len("<extra_id_"):-1]))
        i = self._sp.PieceToId(piece)
        if i == UNK_ID and piece != self._sp.IdToPiece(UNK_ID):
            raise PlexbenchError(f"piece {piece!r} is not in vocabulary '{self.name}'")
        return int(i)

    def encode(self, text: str) -> list[int]:
        """The piece ids of `text` (no EOS)."""
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids) -> str:
        """Text of ids; sentinels become `<extra_id_k>`, padding and EOS end nothing (dropped)."""
        out, run = [], []
        for i in (int(x) for x in ids):
            if i in (PAD_ID, EOS_ID):
                continue
            if i >= self.num_pieces:
                out.append(self._sp.DecodeIds(run))
                run = []
                out.append(f"<extra_id_{self.num_pieces + self.extra_ids - 1 - i}>")
            else:
                run.append(i)
        out.append(self._sp.DecodeIds(run))
        return "".join(out)

    def encode_batch(self, texts: list[str], length: int) -> np.ndarray:
        """int32 (N, length): pieces truncated to length - 1, EOS, then 0-padding."""
        if length < 2:
            raise PlexbenchError(f"token length must be >= 2 (room for EOS), got {length}")
        out = np.zeros((len(texts), length), np.int32)
        for row, ids in enumerate(self._sp.EncodeAsIds(list(texts))):
            ids = ids[: length - 1] + [EOS_ID]
            out[row, : len(ids)] = ids
        return out


def register_vocab_file(name: str, path: str | os.PathLike) -> None:
    """Use the SentencePiece model at `path` for vocabulary `name` (e.g. `--vocab PATH` for t5)."""
    if name not in VOCABS:
        raise PlexbenchError(unknown_name_message("vocabulary", name, list(VOCABS)))
    p = Path(path).expanduser()
    if not p.is_file():
        raise PlexbenchError(f"vocabulary file not found: {p}")
    _REGISTERED[name] = p.resolve()


def vocab_path(name: str) -> Path:
    """The file of vocabulary `name`: registered, else its environment variable, else its default."""
    if name not in VOCABS:
        raise PlexbenchError(unknown_name_message("vocabulary", name, list(VOCABS)))
    default, _, env = VOCABS[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    if env and os.environ.get(env):
        p = Path(os.environ[env]).expanduser()
        if not p.is_file():
            raise PlexbenchError(f"${env} names {p}, which is not a file")
        return p
    if default is not None and default.is_file():
        return default
    if name == "t5":
        raise PlexbenchError(f"the T5 vocabulary is needed: download {T5_VOCAB_SOURCE} and pass --vocab PATH "
                             f"(or set ${T5_VOCAB_ENV})")
    raise PlexbenchError(f"vocabulary '{name}' is missing: {default}")


def get_tokenizer(name: str) -> Tokenizer:
    """The Tokenizer of vocabulary `name` (cached per file)."""
    path = vocab_path(name)
    return _load(str(path), VOCABS[name][1], name, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: str, extra_ids: int, name: str, mtime_ns: int) -> Tokenizer:
    del mtime_ns  # part of the cache key: a replaced file is read again
    return Tokenizer(Path(path).read_bytes(), extra_ids, name)


def train_vocab(texts: list[str], path: str | os.PathLike, *, vocab_size: int, seed: int = 0) -> Tokenizer:
    """Train a unigram SentencePiece model with T5's special ids on `texts`; write it to `path`.

    Pieces: `vocab_size` (pad 0, eos 1, unk 2, no bos), character coverage 1.0, nmt_nfkc
    normalisation, single-threaded with a fixed seed so the same texts give the same file.
    """
    import io

    import sentencepiece as spm

    from plexbench import fileio

    model = io.BytesIO()
    spm.SetRandomGeneratorSeed(seed)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, character_coverage=1.0,
        normalization_rule_name="nmt_nfkc", num_threads=1, shuffle_input_sentence=False,
        max_sentence_length=1 << 16, minloglevel=2)
    fileio.write_bytes(path, model.getvalue())
    return Tokenizer(model.getvalue(), T5_EXTRA_IDS, Path(path).stem)
