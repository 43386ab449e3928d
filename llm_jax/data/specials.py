"""Special token ids, read from a tokenizer's own files so that a model imported from Hugging Face keeps its ids.

`Specials` says which ids mark padding and a document's start and end (what packing writes), and, where the
tokenizer has them, its [MASK] and its T5 sentinels (<extra_id_0>, <extra_id_1>, ... by name: Hugging Face's T5
numbers them downwards from the top of its vocabulary). Objectives use those and add ids of their own only for
what is missing.
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3  # the byte tokenizer's and `llm-jax tokenizer train`'s
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 in the byte and trained SentencePiece tokenizers
SENTINEL = "<extra_id_{}>"  # T5's sentinel names, numbered from 0


@dataclasses.dataclass(frozen=True)
class Specials:
    """pad, bos, eos: the ids packing writes. mask and sentinels: the tokenizer's own [MASK] and T5 sentinels
    (None / () when it has none). `has_bos` is False when the tokenizer has no <bos> and `bos` is a stand-in
    (its eos). `others`: further ids that stand for no text (a Hugging Face tokenizer's [UNK], [CLS], ...)."""

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID
    mask: int | None = None
    sentinels: tuple[int, ...] = ()
    has_bos: bool = True
    others: tuple[int, ...] = ()

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids packing writes."""
        return tuple(sorted({self.pad, self.bos, self.eos}))

    @property
    def reserved(self) -> tuple[int, ...]:
        """Every special id: never masked, never drawn as a random replacement, never scored as text."""
        extra = {self.mask} if self.mask is not None else set()
        return tuple(sorted({*self.ids, *extra, *self.sentinels, *self.others}))

    @property
    def decoder_start(self) -> int:
        """An encoder-decoder's first decoder input: <bos>, or <pad> for a tokenizer without one (T5, whose Hugging
        Face decoder_start_token_id is its pad id 0)."""
        return self.bos if self.has_bos else self.pad


DEFAULT_SPECIALS = Specials()  # the byte tokenizer's and `llm-jax tokenizer train`'s


def find_sentinels(token_to_id: Callable[[str], int | None]) -> tuple[int, ...]:
    """The ids of <extra_id_0>, <extra_id_1>, ... up to the first name the vocabulary lacks."""
    found: list[int] = []
    while (i := token_to_id(SENTINEL.format(len(found)))) is not None:
        found.append(i)
    return tuple(found)


def sentencepiece_specials(sp) -> Specials:
    """From a SentencePiece model's own ids (-1: absent). A model without <pad> pads with <eos> and one without
    <bos> marks document starts with <eos> (has_bos False, so an encoder-decoder starts decoding from its pad, as
    T5 does): Llama 2 (unk 0, bos 1, eos 2) pads with 2; T5 (pad 0, eos 1, unk 2) gets bos 1, decoder start 0.
    Models from `llm-jax tokenizer train` keep pad 0, bos 1, eos 2. <extra_id_N> pieces are sentinels if present
    (T5's spiece.model has none: transformers adds them after it; use its tokenizer.json, data.tokenizer=hf)."""
    if sp.eos_id() < 0:
        from llm_jax.config.load import ConfigError

        raise ConfigError("the SentencePiece model has no eos id (eos_id=-1); the packer needs one to end documents")
    eos, bos, pad = sp.eos_id(), sp.bos_id(), sp.pad_id()

    def piece_id(piece: str) -> int | None:
        i = sp.piece_to_id(piece)  # an unknown piece maps to <unk>: check that the id really is this piece
        return i if sp.id_to_piece(i) == piece else None

    return Specials(pad=pad if pad >= 0 else eos, bos=bos if bos >= 0 else eos, eos=eos, has_bos=bos >= 0,
                    sentinels=find_sentinels(piece_id))


ROLES = {"pad": ("pad",), "bos": ("bos", "cls"), "eos": ("eos", "sep"), "mask": ("mask",)}


def hf_specials(directory: pathlib.Path, tok) -> Specials:
    """From a Hugging Face directory's tokenizer_config.json or special_tokens_map.json, by token name: pad, bos
    (else cls: BERT's [CLS]), eos (else sep: BERT's [SEP]) and mask. A missing bos or pad falls back to eos (GPT-2
    has one <|endoftext|> for all three); without bos, has_bos is False (T5). Sentinels are the <extra_id_N>
    tokens of `tok`'s vocabulary; `others` are its remaining special added tokens."""
    configs = [json.loads((directory / f).read_text()) for f in ("special_tokens_map.json", "tokenizer_config.json")
               if (directory / f).is_file()]

    def named_id(key: str) -> int | None:
        """The id of the first `{key}_token` the files name that the vocabulary has."""
        for config in configs:
            value = config.get(f"{key}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and tok.token_to_id(value) is not None:
                return tok.token_to_id(value)
        return None

    ids: dict[str, int] = {}
    for role, keys in ROLES.items():
        found = [i for i in map(named_id, keys) if i is not None]
        if found:
            ids[role] = found[0]
    if "eos" not in ids:
        from llm_jax.config.load import ConfigError

        raise ConfigError(f"{directory}: no eos token in tokenizer_config.json or special_tokens_map.json; the "
                          "packer needs one to end documents")
    specials = Specials(pad=ids.get("pad", ids["eos"]), bos=ids.get("bos", ids["eos"]), eos=ids["eos"],
                        mask=ids.get("mask"), sentinels=find_sentinels(tok.token_to_id), has_bos="bos" in ids)
    added = tok.get_added_tokens_decoder()  # id -> AddedToken
    others = tuple(sorted(i for i, t in added.items() if t.special and i not in specials.reserved))
    return dataclasses.replace(specials, others=others)
