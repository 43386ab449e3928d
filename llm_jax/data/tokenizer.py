"""Tokenizers. The special tokens are declared here, once, for every tokenizer kind."""

import hashlib

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 in every tokenizer


class ByteTokenizer:
    """UTF-8 bytes shifted past the special tokens: needs no files and never sees an unknown symbol."""

    kind = "byte"
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

    def identity(self) -> dict:
        """What a run records so that it can refuse to resume with a different tokenizer."""
        digest = hashlib.sha256(f"{self.kind}:{self.offset}:{SPECIAL_TOKENS}".encode()).hexdigest()[:16]
        return {"kind": self.kind, "vocab_size": self.vocab_size, "hash": digest}


def make_tokenizer(name: str) -> ByteTokenizer:
    if name == "byte":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer '{name}' in data.tokenizer; choose: byte")
