"""One table per architecture says how each Hugging Face tensor becomes llm_jax's portable tensors (params.py's
names, the model's layouts) and back; import and export both read it, so the two directions cannot drift apart,
and an import followed by an export gives the same bytes.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Read = Callable[[str], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A Hugging Face tensor `hf` <-> the portable tensors `ours` (one, or the parts of a fused tensor)."""

    hf: str
    ours: tuple[str, ...]
    hf_shape: tuple[int, ...]  # what config.json implies: a file that disagrees is refused before conversion
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def same(hf: str, ours: str, shape: Sequence[int]) -> Tensor:
    return Tensor(hf, (ours,), tuple(shape), lambda a: (a,), lambda a: a)


def layernorm(hf: str, ours: str, width: int) -> list[Tensor]:
    """A LayerNorm's weight and bias (`hf` ends in '.') <-> ours `<ours>.scale`, `<ours>.bias`."""
    return [same(hf + "weight", f"{ours}.scale", (width,)), same(hf + "bias", f"{ours}.bias", (width,))]


def reshaped(hf: str, ours: str, shape: Sequence[int]) -> Tensor:
    """A flat Hugging Face tensor (a bias) <-> ours of `shape` (e.g. a query bias [H, K])."""
    return Tensor(hf, (ours,), (math.prod(shape),), lambda a: (a.reshape(shape),), lambda a: a.reshape(-1))


def linear(hf: str, ours: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> Tensor:
    """A torch Linear weight [out, in] <-> ours [*in_shape, *out_shape] (e.g. a query [D, H, K])."""
    shape, n_in, n_out = (*in_shape, *out_shape), math.prod(in_shape), math.prod(out_shape)
    return Tensor(hf, (ours,), (n_out, n_in), lambda a: (a.T.reshape(shape),), lambda a: a.reshape(n_in, n_out).T)


def conv1d(hf: str, ours: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> Tensor:
    """GPT-2's Conv1D weight [in, out] <-> ours [*in_shape, *out_shape]."""
    shape, n_in, n_out = (*in_shape, *out_shape), math.prod(in_shape), math.prod(out_shape)
    return Tensor(hf, (ours,), (n_in, n_out), lambda a: (a.reshape(shape),), lambda a: a.reshape(n_in, n_out))


def fused(hf: str, ours: Sequence[str], shape: Sequence[int]) -> Tensor:
    """A tensor whose last axis holds len(ours) equal parts (GPT-2's c_attn: q, k, v), each of which is `shape` in
    llm_jax: the part's last axis split in two (heads, head width)."""
    n, lead = len(ours), tuple(shape[:-2])
    return Tensor(hf, tuple(ours), (*lead, n * shape[-2] * shape[-1]),
                  lambda a: tuple(p.reshape(shape) for p in np.split(a, n, axis=-1)),
                  lambda *parts: np.concatenate([p.reshape(*lead, -1) for p in parts], axis=-1))


def read_all(table: list[Tensor], read: Read) -> Iterator[tuple[str, np.ndarray]]:
    """(portable name, array) for every entry of `table`, reading one Hugging Face tensor at a time."""
    for t in table:
        yield from converted(t, read(t.hf))


def converted(t: Tensor, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(portable name, array) of Hugging Face tensor `array`, after checking its shape against config.json's."""
    if tuple(array.shape) != t.hf_shape:
        raise ValueError(f"tensor {t.hf!r} has shape {tuple(array.shape)}, but config.json implies {t.hf_shape}")
    return zip(t.ours, t.to_ours(array), strict=True)


def write_all(table: list[Tensor], ours: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(Hugging Face name, array) for every entry of `table`, from the portable tensors `ours`."""
    for t in table:
        missing = [name for name in t.ours if name not in ours]
        if missing:
            raise KeyError(f"the parameters lack {missing[0]!r}, which {t.hf} is made from")
        yield t.hf, np.ascontiguousarray(t.to_hf(*(ours[name] for name in t.ours)))


def check_tied(read: Read, m: dict, head: str, embedding: str) -> None:
    """A head tied to the embedding (model.tie_embeddings) in a file that has a different `head` of its own, which
    transformers would use: refused, naming the config key to change."""
    if not m["tie_embeddings"]:
        return
    try:
        head_VD = read(head)
    except ValueError:  # the file has no head of its own: tied, as the config says
        return
    if not np.array_equal(head_VD, read(embedding)):
        raise ValueError(f"config.json ties the output head to the embedding, yet the file has a different {head}, "
                         "which transformers uses; set tie_word_embeddings to false in config.json to import it")
