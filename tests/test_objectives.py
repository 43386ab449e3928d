"""The seam: every objective's examples match its spec, causal LM is what it always was, prefix LM's prefix is
read both ways and not scored, examples do not depend on the worker count, and the registry refuses a family that
cannot learn the objective."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.config import ConfigError
from llm_jax.config.validate import finalize
from llm_jax.data.packing import pack_documents
from llm_jax.data.pipeline import make_data
from llm_jax.data.tokenizer import make_tokenizer
from llm_jax.models import build_model
from llm_jax.models.layout import constrain, on_mesh
from llm_jax.objectives import OBJECTIVES, extra_tokens, make_objective
from llm_jax.objectives.prefix_lm import prefix_marks
from tests.conftest import small_config

FAMILY_OF = {"causal_lm": "decoder", "prefix_lm": "decoder", "masked_lm": "encoder",
             "span_corruption": "encoder_decoder"}


def _config(objective: str, *overrides: str):
    cfg = small_config()
    cfg.model.family, cfg.objective.name = FAMILY_OF[objective], objective
    if objective == "span_corruption":
        cfg.model.positions = "relative"
    for item in overrides:
        key, value = item.split("=")
        section, name = key.split(".")
        cfg[section][name] = type(cfg[section][name])(value)
    return cfg


def _rows(seed=0, n_rows=64, row_len=33):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, 259, size=n) for n in rng.integers(1, 40, size=200)]
    rows = pack_documents(docs, row_len, "best_fit")
    n_rows = min(n_rows, len(rows["tokens"]))
    return [{"tokens": rows["tokens"][i], "segment_ids": rows["segment_ids"][i]} for i in range(n_rows)]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_example_matches_its_spec(name):
    cfg = _config(name)
    objective = make_objective(cfg, make_tokenizer("byte"))
    rng = np.random.default_rng(0)
    for row in _rows(row_len=objective.row_len()):
        example = objective.example(row, rng)
        objective.spec().check(example)
        assert example["weights"].sum() > 0
        assert set(np.unique(example["weights"])) <= {0.0, 1.0}
        # Padding is never scored.
        assert not np.any(example["weights"][example["segment_ids"] == 0])


def test_causal_lm_examples_are_the_shifted_rows():
    """Written out here: inputs row[:-1], targets row[1:], weight 1 where the target continues its document,
    positions counting from 0 in each document."""
    objective = make_objective(_config("causal_lm"), make_tokenizer("byte"))
    for row in _rows():
        tokens, seg = row["tokens"], row["segment_ids"]
        ex = objective.example(row, None)
        np.testing.assert_array_equal(ex["inputs"], tokens[:-1])
        np.testing.assert_array_equal(ex["targets"], tokens[1:])
        np.testing.assert_array_equal(ex["segment_ids"], seg[:-1])
        expected_w = [float(seg[i + 1] != 0 and seg[i + 1] == seg[i]) for i in range(len(seg) - 1)]
        np.testing.assert_array_equal(ex["weights"], expected_w)
        pos, expected_p = 0, []
        for i in range(len(seg) - 1):
            pos = 0 if i == 0 or seg[i] != seg[i - 1] else pos + 1
            expected_p.append(pos)
        np.testing.assert_array_equal(ex["positions"], expected_p)


def test_prefix_lm_scores_only_after_each_documents_prefix():
    objective = make_objective(_config("prefix_lm"), make_tokenizer("byte"))
    cuts = []
    for i, row in enumerate(_rows(n_rows=200)):
        seg = row["segment_ids"]
        marks = prefix_marks(seg, np.random.default_rng(i))
        ex = objective.example(row, np.random.default_rng(i))
        np.testing.assert_array_equal(ex["prefix"], marks[:-1])
        for s in set(seg[seg != 0].tolist()):
            where = np.flatnonzero(seg == s)
            m = marks[where]
            n_prefix = int(m.sum())
            # The prefix is the document piece's first tokens, at least 1, fewer than all unless it is 1 long.
            assert m[:n_prefix].all() and not m[n_prefix:].any()
            assert 1 <= n_prefix <= max(len(where) - 1, 1)
            if len(where) >= 10:  # the cut is uniform over 1..n-1
                cuts.append((n_prefix - 1) / (len(where) - 2))
        # A target in the prefix has weight 0; after it, the causal weight.
        w = ex["weights"]
        assert not np.any(w[marks[1:] == 1])
        causal = (seg[1:] == seg[:-1]) & (seg[1:] != 0) & (marks[1:] == 0)
        np.testing.assert_array_equal(w, causal.astype(np.float32))
    assert len(cuts) > 100 and 0.4 < np.mean(cuts) < 0.6, "prefix cut points should be uniform over the document"


def test_prefix_lm_attention_sees_the_whole_prefix_and_no_later_targets():
    cfg = finalize(_config("prefix_lm"), 259)
    cfg.model.init_std, cfg.model.tie_embeddings = 0.2, False  # untied: the embedding feeds only the inputs
    model = build_model(cfg.model)
    L = 12
    tokens = jnp.arange(3, 3 + L, dtype=jnp.int32)[None]
    seg = jnp.ones_like(tokens)
    pos = jnp.arange(L, dtype=jnp.int32)[None]
    prefix = (jnp.arange(L) < 5).astype(jnp.int32)[None]
    params = nn.unbox(model.init(jax.random.key(0), tokens, seg, pos, prefix_BL=prefix)["params"])
    embed = params["embedding"]

    def out(x_LD):
        p = {**params, "embedding": embed.at[tokens[0]].set(x_LD)}
        return model.apply({"params": p}, tokens, seg, pos, prefix_BL=prefix)[0].sum(-1)

    jac = np.asarray(jax.jacrev(out)(embed[tokens[0]])).sum(-1)  # [query, key]
    seen = np.abs(jac) > 0
    for q in range(L):
        for k in range(L):
            expected = k <= q or k < 5  # causal, plus every prefix key
            assert seen[q, k] == expected, f"query {q} key {k}: seen {seen[q, k]}, expected {expected}"


@pytest.mark.parametrize("name", ["masked_lm", "span_corruption", "prefix_lm"])
def test_examples_do_not_depend_on_worker_processes_or_the_resume_point(name):
    base = make_data(_config(name))
    workers = make_data(_config(name, "data.workers=2"))
    try:
        expected = [base.train.batch_at(k) for k in range(5)]
        for k in range(5):
            got = workers.train.batch_at(k)
            assert got.keys() == expected[k].keys()
            for key in got:
                np.testing.assert_array_equal(got[key], expected[k][key], err_msg=f"batch {k} {key}")
        # Resuming at batch 3 (the data state is the examples read) with workers yields the same examples.
        workers.train.set_state({"examples": 3 * base.train.global_batch})
        resumed = [next(workers.train) for _ in range(2)]
        for k, got in zip((3, 4), resumed, strict=True):
            for key in got:
                np.testing.assert_array_equal(got[key], expected[k][key], err_msg=f"resumed batch {k} {key}")
        # Different examples come from different rows or masks: the stream is not stuck on one example.
        assert any(not np.array_equal(expected[0][k], expected[1][k]) for k in expected[0])
    finally:
        base.train.close()
        workers.train.close()


def test_extra_tokens_grow_the_vocabulary():
    assert extra_tokens(_config("causal_lm")) == 0
    assert extra_tokens(_config("masked_lm")) == 1
    spans = extra_tokens(_config("span_corruption"))
    assert spans >= 1
    objective = make_objective(_config("span_corruption"), make_tokenizer("byte"))
    assert objective.sentinel_ids[0] == make_tokenizer("byte").vocab_size


@pytest.mark.parametrize("family,objective", [("decoder", "masked_lm"), ("encoder", "causal_lm"),
                                              ("encoder_decoder", "prefix_lm")])
def test_a_family_that_cannot_learn_the_objective_is_refused(family, objective):
    cfg = small_config()
    cfg.model.family, cfg.objective.name = family, objective
    with pytest.raises(ConfigError, match=f"objective.name='{objective}' does not fit model.family='{family}'"):
        extra_tokens(cfg)


def test_a_model_traced_on_a_mesh_without_rules_is_an_error():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = jnp.zeros((8, 4))
    with jax.set_mesh(mesh), pytest.raises(RuntimeError, match="without logical axis rules"):
        jax.jit(lambda a: constrain(a, ("batch", None)))(x)
    with on_mesh(mesh, (("batch", "data"),)):  # the helper enters both: fine
        jax.jit(lambda a: constrain(a, ("batch", None)))(x)


def test_span_corruption_on_rows_too_short_for_one_noise_token_is_a_config_error():
    cfg = _config("span_corruption")
    cfg.train.seq_len = 4  # floor(4 x 0.15) = 0: no span could be dropped
    with pytest.raises(ConfigError, match=r"raise train.seq_len to at least 7"):
        extra_tokens(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("model.type_vocab_size", 2, "only read by model.family='encoder'"),
    ("model.num_decoder_layers", 3, "only read by model.family='encoder_decoder'"),
    ("objective.whole_word", True, "objective.whole_word is for masked_lm"),
])
def test_a_key_the_family_does_not_read_is_refused(key, value, message):
    from llm_jax.config import validate

    cfg = small_config()
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(finalize(cfg, 259), 1)


def test_span_corruption_reserves_100_sentinels_so_its_settings_keep_the_vocabulary():
    """As T5: changing the noise density or mean span (e.g. on resume) leaves the model's vocabulary alone."""
    sizes = set()
    for density, span in ((0.15, 3.0), (0.5, 1.0), (0.05, 8.0)):
        cfg = _config("span_corruption", f"objective.noise_density={density}", f"objective.mean_span={span}")
        sizes.add(finalize(cfg, 259 + extra_tokens(cfg)).model.vocab_size)
        assert extra_tokens(cfg) == 100
    assert sizes == {384}
