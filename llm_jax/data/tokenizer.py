"""Tokenizers. Each says its special ids in `specials` (data/specials.py), which packing, objectives and sampling
read.

The byte tokenizer and models from `llm-jax tokenizer train` use ids 0, 1, 2 for <pad>, <bos>, <eos>; any other
SentencePiece model and a Hugging Face tokenizer (tokenizer.json) have their own. A SentencePiece processor does not
pickle, so it is loaded lazily (and again in each grain worker).
"""

import functools
import hashlib
import pathlib

import numpy as np

from llm_jax.data.specials import (
    BOS_ID,
    DEFAULT_SPECIALS,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Specials,
    hf_specials,
    sentencepiece_specials,
)


class ByteTokenizer:
    """UTF-8 bytes shifted past the special tokens: needs no files and never sees an unknown symbol."""

    kind = "byte"
    specials = DEFAULT_SPECIALS
    offset = len(SPECIAL_TOKENS)
    vocab_size = offset + 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.offset

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        # Special tokens and the model's padded-vocab ids (>= vocab_size) are not text: drop them.
        ids = ids[(ids >= self.offset) & (ids < self.vocab_size)]
        data = bytes((ids - self.offset).astype(np.uint8).tolist())
        return data.decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """[vocab_size] UTF-8 bytes of text each id stands for (0 for special tokens): for bits per byte."""
        return (np.arange(self.vocab_size) >= self.offset).astype(np.int32)

    def identity(self) -> dict:
        """What a run records so that it can refuse to resume with a different tokenizer."""
        digest = hashlib.sha256(f"{self.kind}:{self.offset}:{SPECIAL_TOKENS}".encode()).hexdigest()[:16]
        return {"kind": self.kind, "vocab_size": self.vocab_size, "hash": digest}


class SentencePieceTokenizer:
    """A SentencePiece model: one trained by `llm-jax tokenizer train` (pad 0, bos 1, eos 2, unk 3, byte fallback)
    or another's (T5, Llama 2), whose special ids come from the model (`sentencepiece_specials`)."""

    kind = "sentencepiece"

    def __init__(self, model_path: str | pathlib.Path):
        self.model_path = pathlib.Path(model_path)
        self._proto = self.model_path.read_bytes()
        self._sp = None

    @property
    def sp(self):
        if self._sp is None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        return self._sp

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sp": None}  # the processor does not pickle; the next worker reloads it

    @functools.cached_property
    def specials(self) -> Specials:
        return sentencepiece_specials(self.sp)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.sp.encode(text), dtype=np.int32)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.vocab_size]
        return self.sp.decode(ids)

    def token_bytes(self) -> np.ndarray:
        """[vocab_size] UTF-8 bytes of text each id stands for: a byte-fallback piece is one byte, '▁' a space,
        control and unknown pieces none. Exact for models from `llm-jax tokenizer train` (no dummy prefix); a
        model that adds one counts one byte too many per document."""
        sp = self.sp
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                out[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i)):
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def identity(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size,
                "hash": hashlib.sha256(self._proto).hexdigest()[:16], "path": str(self.model_path)}


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (GPT-2 byte-level BPE, Llama 3 BPE, BERT WordPiece, ...) through the
    `tokenizers` library; its special ids come from the directory's tokenizer_config.json / special_tokens_map.json
    (or the file's own added tokens)."""

    kind = "hf"

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        self.path = path / "tokenizer.json" if path.is_dir() else path
        self._json = self.path.read_bytes()
        self._tok = None
        self.specials = hf_specials(self.path.parent, self.tok)

    @property
    def tok(self):
        if self._tok is None:
            from tokenizers import Tokenizer as _Tokenizer

            self._tok = _Tokenizer.from_str(self._json.decode("utf-8"))
        return self._tok

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.vocab_size]
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        """[vocab_size] UTF-8 bytes each id decodes to alone (0 for special tokens): exact for byte-level BPE,
        close for WordPiece and SentencePiece-style pieces."""
        special = set(self.specials.reserved)  # its special added tokens among them
        return np.array([0 if i in special else len(self.tok.decode([i]).encode("utf-8"))
                         for i in range(self.vocab_size)], np.int32)

    def identity(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "hash": hashlib.sha256(self._json).hexdigest()[:16],
                "path": str(self.path)}


Tokenizer = ByteTokenizer | SentencePieceTokenizer | HFTokenizer


def make_tokenizer(name: str, path: str = "") -> Tokenizer:
    """`data.tokenizer` is 'byte', 'sentencepiece' (then `data.tokenizer_path` is the .model file) or 'hf' (then it
    is a tokenizer.json or the Hugging Face directory holding one)."""
    if name == "byte":
        return ByteTokenizer()
    if name == "hf":
        from llm_jax.config.load import ConfigError

        file = pathlib.Path(path) / "tokenizer.json" if path and pathlib.Path(path).is_dir() else pathlib.Path(path)
        if not path or not file.is_file():
            gone = " (it does not exist: moved or deleted?)" if path and not pathlib.Path(path).exists() else ""
            raise ConfigError(f"data.tokenizer_path={path!r} is not a tokenizer.json (or a directory with one)"
                              f"{gone}; data.tokenizer=hf reads a Hugging Face tokenizer: give its place with "
                              "--config.data.tokenizer_path=DIR")
        try:
            return HFTokenizer(file)
        except ConfigError:
            raise
        except Exception as e:  # the tokenizers library's parse error, bad JSON in its config files, not UTF-8
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"data.tokenizer_path={path!r}: {file} (or the tokenizer_config.json / "
                              f"special_tokens_map.json beside it) is not a readable Hugging Face tokenizer ({why})"
                              ) from None
    if name == "sentencepiece":
        if not path or not pathlib.Path(path).is_file():
            from llm_jax.config.load import ConfigError

            raise ConfigError(f"data.tokenizer_path={path!r} is not a file; pass the tokenizer.model written by "
                              "`llm-jax tokenizer train --out=DIR`")
        return SentencePieceTokenizer(path)
    raise ValueError(f"unknown tokenizer '{name}' in data.tokenizer; choose: byte, sentencepiece, hf")


__all__ = ["BOS_ID", "DEFAULT_SPECIALS", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "UNK_ID", "ByteTokenizer", "HFTokenizer",
           "SentencePieceTokenizer", "Specials", "Tokenizer", "make_tokenizer"]
