"""KV-cache generation against recomputing the whole prefix: greedy equality, sampling filters, seeds, a sharded
mesh, the context cap and <eos>.

Every call keeps the same shapes where it can (3 prompts, context 24, 10 new tokens) so that the prefill, the
decode loop and the reference forward compile once per model.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from llm_jax.config.base import DEFAULT_RULES
from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from llm_jax.models import build_model, unstack_layers
from llm_jax.models.decoder import init_cache
from llm_jax.train import sample
from llm_jax.train.sample import generate
from llm_jax.train.state import param_shardings
from tests.test_model import apply, init, make_cfg, random_tokens

CONTEXT, NEW = 24, 10
# Different lengths (4, 10 and 7 with <bos>), so each row continues from its own position.
PROMPTS = [random_tokens((3,), seed=11), random_tokens((9,), seed=12), random_tokens((6,), seed=13)]

MODELS = {
    "rope-rmsnorm-swiglu-gqa": dict(num_heads=4, num_kv_heads=2),
    "learned-layernorm-gelu-mqa": dict(positions="learned", norm="layernorm", mlp="gelu", num_heads=4,
                                       num_kv_heads=1, qk_norm=True, tie_embeddings=False),
}


@functools.lru_cache
def model_and_params(name: str, scan: bool = True):
    """Random parameters large enough (init_std 0.2) that greedy decoding does not repeat one token."""
    model, params = init(make_cfg(init_std=0.2, scan_layers=True, **MODELS[name]), seed=1)
    if scan:
        return model, params
    return build_model(make_cfg(init_std=0.2, scan_layers=False, **MODELS[name])), unstack_layers(params, 2)


def rows_of(prompts, context=CONTEXT, max_new=NEW):
    """<bos> + prompt, an over-long one cut to its last tokens so that max_new fit (keeping half the context)."""
    keep = max(context - max_new, (context + 1) // 2)
    return [np.concatenate([[BOS_ID], p])[-keep:].astype(np.int32) for p in prompts]


def reference(model, params, prompts, max_new=NEW, context=CONTEXT, given=None):
    """Greedy without a cache: the whole prefix through model.apply for every new token (in a fixed-width buffer,
    which a causal model does not see past). Returns (new ids per row, the logits at each new token's step). With
    `given` (sampled continuations), feeds those tokens instead of the argmax, to score them."""
    rows = rows_of(prompts, context, max_new)
    buf = np.full((len(rows), context), PAD_ID, np.int32)
    for i, r in enumerate(rows):
        buf[i, : len(r)] = r
    lengths = [len(r) for r in rows]
    out, logits = [[] for _ in rows], [[] for _ in rows]
    done = [n >= context or (given is not None and not len(given[i])) for i, n in enumerate(lengths)]
    for _ in range(max_new):
        if all(done):
            break
        step = apply(model, params, buf)
        for i in range(len(rows)):
            if done[i]:
                continue
            n = lengths[i] + len(out[i])
            tok = int(np.argmax(step[i, n - 1])) if given is None else int(given[i][len(out[i])])
            logits[i].append(step[i, n - 1])
            if tok == EOS_ID:
                done[i] = True
                continue
            out[i].append(tok)
            buf[i, n] = tok
            done[i] = n + 1 >= context or len(out[i]) == max_new or (given is not None and len(out[i]) == len(given[i]))
    return [np.array(o, np.int32) for o in out], logits


def assert_same(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, w, err_msg=f"row {i}")


# ---------------------------------------------------------------- the cache path of the model


@pytest.mark.parametrize("name, scan", [("rope-rmsnorm-swiglu-gqa", True), ("learned-layernorm-gelu-mqa", False)],
                         ids=["rope-gqa-scan", "learned-mqa-unrolled"])
def test_prefill_through_the_cache_equals_the_forward(name, scan):
    model, params = model_and_params(name, scan)
    cfg, B, S = model.cfg, 3, model.cfg.max_seq_len
    tokens = random_tokens((B, CONTEXT), seed=5)  # the reference's shape: its forward compiles once per model
    positions = jnp.broadcast_to(jnp.arange(CONTEXT, dtype=jnp.int32), (B, CONTEXT))

    @jax.jit
    def with_cache(params):
        return model.apply({"params": params}, tokens, jnp.ones_like(tokens), positions, init_cache(cfg, B, S))

    logits, cache = with_cache(params)
    np.testing.assert_allclose(logits, apply(model, params, tokens), atol=1e-5, rtol=1e-5)
    assert cache["k"].shape == cache["v"].shape == (cfg.num_layers, B, S, cfg.num_kv_heads, cfg.head_dim)
    # The prompt's slots are written (differently per layer), the rest are still empty.
    for kv in (np.asarray(cache["k"]), np.asarray(cache["v"])):
        assert (np.abs(kv[:, :, :CONTEXT]).max(axis=(3, 4)) > 0).all() and not kv[:, :, CONTEXT:].any()
        assert np.abs(kv[0] - kv[1]).max() > 1e-3


# ---------------------------------------------------------------- greedy decoding


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_recomputing_the_prefix(name, scan):
    model, params = model_and_params(name, scan)
    want, _ = reference(model, params, PROMPTS)
    assert len(np.unique(np.concatenate(want))) > 1, "degenerate model: every new token is the same"
    assert [len(w) for w in want] == [NEW] * 3  # no early <eos>: every step is compared
    assert_same(generate(model, params, PROMPTS, NEW, CONTEXT, temperature=0.0), want)


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    want, _ = reference(model, params, PROMPTS)
    assert_same(generate(model, params, PROMPTS, NEW, CONTEXT, temperature=1.0, top_k=1, seed=3), want)
    assert_same(generate(model, params, PROMPTS, NEW, CONTEXT, temperature=1.0, top_p=1e-6, seed=3), want)
    # Without a filter, temperature 1 strays from greedy (so the two checks above are sharp).
    plain = generate(model, params, PROMPTS, NEW, CONTEXT, temperature=1.0, seed=3)
    assert any(len(p) != len(w) or (p != w).any() for p, w in zip(plain, want, strict=True))


def _rank_and_mass_before(logits_V, token, temperature):
    """The token's rank in the logits, and the probability mass (at this temperature) of the tokens above it."""
    order = np.argsort(-logits_V)
    probs = np.exp((logits_V[order] - logits_V[order[0]]) / temperature)
    probs /= probs.sum()
    rank = int(np.flatnonzero(order == token)[0])
    return rank, float(probs[:rank].sum())


def _checked_samples(model, params, temperature, **filters):
    """Sampled continuations and, for every sampled token, (rank, mass before it) under the reference logits."""
    samples = generate(model, params, PROMPTS, NEW, CONTEXT, temperature=temperature, seed=7, **filters)
    assert sum(len(s) for s in samples) >= 10
    _, logits = reference(model, params, PROMPTS, given=samples)
    return [_rank_and_mass_before(logits[i][j], int(tok), temperature)
            for i, s in enumerate(samples) for j, tok in enumerate(s)]


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    # Unfiltered at temperature 3, some token falls outside the best 3 and outside the 50% nucleus.
    plain = _checked_samples(model, params, 3.0)
    assert max(rank for rank, _ in plain) >= 3 and max(mass for _, mass in plain) >= 0.5
    assert max(rank for rank, _ in _checked_samples(model, params, 3.0, top_k=3)) < 3
    assert max(mass for _, mass in _checked_samples(model, params, 3.0, top_p=0.5)) < 0.5
    both = _checked_samples(model, params, 3.0, top_k=3, top_p=0.5)
    assert max(rank for rank, _ in both) < 3 and max(mass for _, mass in both) < 0.5


def test_same_seed_same_samples_other_seed_other_samples():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    a, b, c = (generate(model, params, PROMPTS, NEW, CONTEXT, temperature=1.5, seed=s) for s in (5, 5, 6))
    assert_same(b, a)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c, strict=True))


# ---------------------------------------------------------------- sharded parameters


def test_sharded_params_give_the_same_greedy_tokens():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    want = generate(model, params, PROMPTS, NEW, CONTEXT, temperature=0.0)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    sharded = jax.device_put(params, param_shardings(model, CONTEXT, mesh, DEFAULT_RULES))
    wq = sharded["layers"]["attn"]["wq"]
    assert len(wq.sharding.device_set) == 8 and not wq.sharding.is_fully_replicated
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = generate(model, sharded, PROMPTS, NEW, CONTEXT, temperature=0.0)
    assert_same(got, want)


# ---------------------------------------------------------------- the context cap and <eos>


def test_context_caps_each_row():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    # Longer than the context, 4 slots left, and a short one: the long ones are cut to leave room for NEW.
    prompts = [random_tokens((CONTEXT + 5,), seed=21), random_tokens((CONTEXT - 4,), seed=22), PROMPTS[0]]
    got = generate(model, params, prompts, NEW, CONTEXT, temperature=0.0)
    assert [len(g) for g in got] == [NEW, NEW, NEW]
    assert_same(got, reference(model, params, prompts)[0])
    # Asking for more than half the context: prompts keep half of it, and a row ends when the context is full.
    many = CONTEXT - 4
    got = generate(model, params, prompts, many, CONTEXT, temperature=0.0)
    assert [len(g) for g in got] == [CONTEXT // 2, CONTEXT // 2, CONTEXT - len(PROMPTS[0]) - 1]
    assert_same(got, reference(model, params, prompts, max_new=many)[0])
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, params, PROMPTS, NEW, model.cfg.max_seq_len + 1)


def test_rows_stop_at_eos_and_the_loop_stops_when_all_have():
    model, params = model_and_params("rope-rmsnorm-swiglu-gqa")
    want, _ = reference(model, params, PROMPTS)
    # Swap <eos> with a token x that row 0 emits (and no prompt holds): the model is the same up to renaming x,
    # so row 0 now stops where it first emitted x, and rows without x do not stop.
    seen = set(np.concatenate(PROMPTS).tolist())
    x = next(int(t) for t in want[0][2:] if t not in seen)
    stop = int(np.flatnonzero(want[0] == x)[0])
    emb = params["embedding"]
    swapped = dict(params, embedding=emb.at[jnp.array([x, EOS_ID])].set(emb[jnp.array([EOS_ID, x])]))
    got = generate(model, swapped, PROMPTS, NEW, CONTEXT, temperature=0.0)
    expect = [w[: int(np.flatnonzero(w == x)[0])] if (w == x).any() else w for w in want]
    assert len(expect[0]) == stop >= 2
    assert_same(got, expect)
    # When every row stops (three copies of row 0, right-padded to the usual width so nothing recompiles), the
    # decode loop ends right after the step that produced <eos>.
    tokens = np.full((3, 10), PAD_ID, np.int32)
    row = rows_of(PROMPTS[:1])[0]
    tokens[:, : len(row)] = row
    lengths, limits = np.full(3, len(row), np.int32), np.full(3, NEW, np.int32)
    settings = (jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    first, cache = sample.prefill(model, swapped, tokens, lengths, CONTEXT, jax.random.key(0), *settings)
    new, steps, _ = sample.decode(model, swapped, cache, first, lengths, limits, NEW, jax.random.key(0), *settings)
    assert int(steps) == stop + 1 < NEW
    np.testing.assert_array_equal(np.asarray(new)[:, : stop + 1], [[*expect[0], EOS_ID]] * 3)
