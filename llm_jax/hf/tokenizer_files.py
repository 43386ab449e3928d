"""The tokenizer files of an exported Hugging Face directory, for each of llm_jax's tokenizer kinds.

- hf: the run's own tokenizer.json, tokenizer_config.json and special_tokens_map.json, copied.
- byte: a tokenizer.json that `tokenizers` (and so transformers' AutoTokenizer) reads as llm_jax's byte tokenizer:
  byte-level BPE without merges, so each UTF-8 byte is one token, at id byte + 3 after <pad>, <bos>, <eos>.
- sentencepiece: the .model file copied as tokenizer.model, with a tokenizer_config.json under which transformers'
  LlamaTokenizer gives the same ids.

Special tokens typed in text stay text, as llm_jax's tokenizers read them (`split_special_tokens`).
"""

import json
import pathlib
import shutil

from llm_jax.data.specials import SENTINEL
from llm_jax.data.tokenizer import SPECIAL_TOKENS, ByteTokenizer, Tokenizer, make_tokenizer
from llm_jax.hf.importer import HFError

HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte (printable Latin-1 bytes stand for themselves, the rest
    for code points from 256 on), as `tokenizers`' ByteLevel pre-tokenizer maps them."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in kept else chr(next(extra)) for b in range(256)}


def byte_tokenizer_json(extra: dict[int, str]) -> str:
    """llm_jax's byte tokenizer as a tokenizer.json, with the run's `extra` special tokens (id -> name) after it."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: b + ByteTokenizer.offset for b, char in bytes_to_unicode().items()})
    vocab.update({name: i for i, name in sorted(extra.items())})
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*SPECIAL_TOKENS, *(name for _, name in sorted(extra.items()))])
    tok.encode_special_tokens = True  # "<eos>" typed in text is five bytes, as llm_jax's byte tokenizer reads it
    return tok.to_str()


def objective_tokens(config: dict, tokenizer: Tokenizer) -> dict[int, str]:
    """The ids the run's objective added after the tokenizer's, by name: [MASK] (masked LM) and <extra_id_N>
    (span corruption), so that the exported tokenizer knows them."""
    from llm_jax.config.load import ConfigError, config_from_saved
    from llm_jax.objectives import make_objective

    try:
        objective = make_objective(config_from_saved(config)[0], tokenizer)
    except ConfigError:
        return {}  # a config this version cannot rebuild: only the tokenizer's own tokens
    extra = {int(i): SENTINEL.format(n) for n, i in enumerate(objective.sentinel_ids)}
    if getattr(objective, "mask_id", None) is not None:
        extra[int(objective.mask_id)] = "[MASK]"
    return {i: name for i, name in extra.items() if i >= tokenizer.vocab_size}


def _special_names(tokenizer: Tokenizer) -> dict[str, str]:
    if tokenizer.kind == "byte":
        return dict(zip(("pad_token", "bos_token", "eos_token"), SPECIAL_TOKENS, strict=True))
    sp, s = tokenizer.sp, tokenizer.specials
    ids = {"pad_token": s.pad, "eos_token": s.eos, "unk_token": sp.unk_id()}
    if s.has_bos:
        ids["bos_token"] = s.bos
    return {role: sp.id_to_piece(i) for role, i in ids.items() if 0 <= i < sp.get_piece_size()}


def _tokenizer(data: dict, identity: dict, tokenizer_path: str) -> Tokenizer:
    kind, path = data.get("tokenizer", "byte"), tokenizer_path or data.get("tokenizer_path", "")
    try:
        tokenizer = make_tokenizer(kind, path)
    except (ValueError, OSError) as e:
        raise HFError(f"the model's tokenizer (data.tokenizer={kind}, data.tokenizer_path={path!r}) cannot be read "
                      f"({e}); give its file with --tokenizer-path") from None
    if identity.get("hash") and identity["hash"] != tokenizer.identity()["hash"]:
        raise HFError(f"the tokenizer at {path!r} is not the one the model was trained with ({identity}); give the "
                      "right file with --tokenizer-path")
    return tokenizer


def write_tokenizer(directory: pathlib.Path, config: dict, identity: dict, tokenizer_path: str = "",
                    ) -> tuple[dict[str, int], list[str]]:
    """Write the tokenizer of a run's saved `config` into `directory`; return the ids config.json and
    generation_config.json carry (bos/eos/pad, and the decoder's first token) and the files written."""
    data = config.get("data", {})
    tokenizer = _tokenizer(data, identity, tokenizer_path)
    s = tokenizer.specials
    ids = {"bos_token_id": s.bos if s.has_bos else None, "eos_token_id": s.eos, "pad_token_id": s.pad,
           "decoder_start_token_id": s.decoder_start}
    if tokenizer.kind == "hf":
        files = [f for f in HF_FILES if (tokenizer.path.parent / f).is_file()]
        for f in files:
            shutil.copyfile(tokenizer.path.parent / f, directory / f)
        return ids, files
    extra = objective_tokens(config, tokenizer)
    names = _special_names(tokenizer)
    if "[MASK]" in extra.values():
        names["mask_token"] = "[MASK]"
    sentinels = [name for _, name in sorted(extra.items()) if name != "[MASK]"]
    if sentinels:
        names["additional_special_tokens"] = sentinels
    settings = dict(names)
    if tokenizer.kind == "byte":
        (directory / "tokenizer.json").write_text(byte_tokenizer_json(extra))
        settings.update(tokenizer_class="PreTrainedTokenizerFast", split_special_tokens=True)
        files = ["tokenizer.json"]
    else:
        shutil.copyfile(tokenizer.model_path, directory / "tokenizer.model")
        # transformers' LlamaTokenizer reads any SentencePiece model as it is, given no prefix space of its own;
        # the objective's extra ids follow the model's own pieces, as transformers adds tokens.
        settings.update(tokenizer_class="LlamaTokenizer", legacy=False, add_prefix_space=False,
                        add_bos_token=False, add_eos_token=False, split_special_tokens=True,
                        added_tokens_decoder={str(i): {"content": name, "special": True, "lstrip": False,
                                                       "rstrip": False, "normalized": False, "single_word": False}
                                              for i, name in sorted(extra.items())})
        files = ["tokenizer.model"]
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
    return ids, [*files, "tokenizer_config.json", "special_tokens_map.json"]
