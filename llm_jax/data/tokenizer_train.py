"""Train a SentencePiece tokenizer on text files: `llm-jax tokenizer train`.

The model keeps text exactly (identity normalisation, no whitespace folding, no dummy prefix), falls back to
UTF-8 bytes for anything unseen, and gives newlines a token of their own, so decode(encode(text)) == text.
"""

import glob
import io
import itertools
import json
import pathlib
from collections.abc import Iterator, Sequence

from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceTokenizer

MODEL_FILE, INFO_FILE = "tokenizer.model", "tokenizer.json"


def expand_inputs(patterns: Sequence[str]) -> list[pathlib.Path]:
    """Files for comma-separated paths or globs; a pattern that matches nothing is an error."""
    files = []
    for pattern in (p.strip() for item in patterns for p in item.split(",")):
        if not pattern:
            continue
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise FileNotFoundError(f"--input pattern '{pattern}' matches no file")
        files += [pathlib.Path(m) for m in matched if pathlib.Path(m).is_file()]
    if not files:
        raise FileNotFoundError("--input names no files; pass e.g. --input='corpus/*.txt'")
    return files


def _lines(files: Sequence[pathlib.Path], text_field: str) -> Iterator[str]:
    """Training sentences: the lines of plain-text files, or the `text_field` of each JSON Lines record."""
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if path.suffix == ".jsonl":
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object with a '{text_field}' field "
                                         f"({e.__class__.__name__})") from None
                    yield from str(text).split("\n")
                else:
                    yield line.rstrip("\n")


def train_sentencepiece(inputs: Sequence[str], vocab_size: int, model_type: str, out_dir: str | pathlib.Path,
                        text_field: str = "text", max_sentences: int = 2_000_000, seed: int = 0
                        ) -> SentencePieceTokenizer:
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"--model-type={model_type!r}: choose bpe or unigram")
    files = expand_inputs(inputs)
    empty = [str(f) for f in files if f.stat().st_size == 0]
    if empty:
        raise ValueError(f"input file(s) are empty: {', '.join(empty)}")
    minimum = 256 + 5  # byte fallback pieces + <pad> <bos> <eos> <unk> and the newline piece
    if vocab_size <= minimum:
        raise ValueError(f"--vocab-size={vocab_size} must exceed {minimum} (256 byte pieces + special tokens)")

    # Read eagerly (up to max_sentences) so that bad input raises our error, not one wrapped by the trainer.
    sentences = list(itertools.islice((s for s in _lines(files, text_field) if s), max_sentences))
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)  # sentence sampling is random: fix it so training is repeatable
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True, character_coverage=0.9995,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, user_defined_symbols=["\n"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, minloglevel=2,
        num_threads=2)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(model.getvalue())
    tokenizer = SentencePieceTokenizer(out_dir / MODEL_FILE)
    info = {**tokenizer.identity(), "model_type": model_type, "inputs": [str(f) for f in files]}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return tokenizer
