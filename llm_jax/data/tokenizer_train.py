"""Train a SentencePiece tokenizer on text, JSONL, Parquet or ArrayRecord files: `llm-jax tokenizer train`.

The model keeps text exactly (identity normalisation, no whitespace folding, no dummy prefix), falls back to
UTF-8 bytes for anything unseen, and gives newlines a token of their own, so decode(encode(text)) == text.
"""

import io
import itertools
import json
import pathlib
from collections.abc import Sequence

from llm_jax.data.sources import SourceOptions, SourceStats, read_documents
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceTokenizer

MODEL_FILE, INFO_FILE = "tokenizer.model", "tokenizer.json"


def train_sentencepiece(inputs: Sequence[str], vocab_size: int, model_type: str, out_dir: str | pathlib.Path,
                        text_field: str = "text", max_sentences: int = 2_000_000, seed: int = 0
                        ) -> SentencePieceTokenizer:
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"--model-type={model_type!r}: choose bpe or unigram")
    minimum = 256 + 5  # byte fallback pieces + <pad> <bos> <eos> <unk> and the newline piece
    if vocab_size <= minimum:
        raise ValueError(f"--vocab-size={vocab_size} must exceed {minimum} (256 byte pieces + special tokens)")

    # The same readers (and bad-input errors) as training data; each line of a document is one sentence.
    # Read eagerly (up to max_sentences) so that bad input raises our error, not one wrapped by the trainer.
    stats = SourceStats()
    lines = (line for doc in read_documents(inputs, SourceOptions(text_field=text_field), stats)
             for line in doc.split("\n"))
    sentences = list(itertools.islice(filter(None, lines), max_sentences))
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
    info = {**tokenizer.identity(), "model_type": model_type, "inputs": list(inputs),
            "documents": stats.counts["documents"]}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return tokenizer
