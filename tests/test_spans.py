"""Span corruption: exact round trips, sentinel order, noise statistics, the decoder length bound, determinism."""

import itertools
import math

import numpy as np
import pytest

from llm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from llm_jax.objectives.spans import corrupt_row, max_spans, target_length, uncorrupt

VOCAB = 300
SENTINELS = list(range(1000, 1200))
SETTINGS = [(0.15, 3.0), (0.3, 2.0), (0.5, 1.0), (0.1, 5.0), (0.25, 3.5)]


def packed_row(lengths, row_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Segments of the given lengths (text with <bos>/<eos> at the ends), zero padded to row_len."""
    tokens_L = np.full(row_len, PAD_ID, np.int32)
    segment_ids_L = np.zeros(row_len, np.int32)
    at = 0
    for s, n in enumerate(lengths, 1):
        tokens_L[at:at + n] = rng.integers(3, VOCAB, n)
        tokens_L[at], tokens_L[at + n - 1] = BOS_ID, EOS_ID  # a length-1 piece is a lone <eos> (a cut document)
        segment_ids_L[at:at + n] = s
        at += n
    return tokens_L, segment_ids_L


def random_lengths(row_len: int, rng: np.random.Generator) -> list[int]:
    lengths, room = [], int(rng.integers(row_len // 2, row_len + 1))
    while room:
        n = int(rng.integers(1, 8)) if rng.random() < 0.5 else int(rng.integers(8, 80))
        lengths.append(min(n, room))
        room -= lengths[-1]
    return lengths


def corrupt(tokens_L, segment_ids_L, seed=0, density=0.15, mean_span=3.0):
    return corrupt_row(tokens_L, segment_ids_L, np.random.default_rng(seed), sentinel_ids=SENTINELS,
                       density=density, mean_span=mean_span,
                       target_len=target_length(len(tokens_L), density, mean_span))


def noise_flags(tokens_n: np.ndarray, encoder_n: np.ndarray, targets_n: np.ndarray) -> np.ndarray:
    """Which tokens of a segment were noise, read off the example token by token; checks sentinel order."""
    spans, k = [], -1
    for t in targets_n:
        if t in SENTINELS:
            k += 1
            assert t == SENTINELS[k], "target sentinels must come in order 0, 1, 2, ..."
            spans.append([])
        else:
            assert k >= 0, "targets start with a sentinel"
            spans[-1].append(t)
    flags, k = [], -1
    for t in encoder_n:
        if t in SENTINELS:
            k += 1
            assert t == SENTINELS[k], "encoder sentinels must come in order 0, 1, 2, ..."
            assert spans[k], "every sentinel stands for at least one token"
            flags += [True] * len(spans[k])
        else:
            flags.append(False)
    assert k + 1 == len(spans), "as many sentinels in the encoder as in the targets"
    assert len(flags) == len(tokens_n)
    return np.array(flags, bool)


def by_segment(values, segment_ids, seg):
    return values[segment_ids == seg]


def test_round_trip_and_format_on_random_rows():
    rng = np.random.default_rng(0)
    n_noisy = 0
    for i in range(2000):
        row_len = int(rng.choice([16, 64, 128]))
        tokens_L, segment_ids_L = packed_row(random_lengths(row_len, rng), row_len, rng)
        ex = corrupt(tokens_L, segment_ids_L, seed=i)
        assert all(v.dtype == np.int32 for k, v in ex.items() if k != "weights")
        restored_tokens, restored_segments = uncorrupt(ex, SENTINELS)
        np.testing.assert_array_equal(restored_tokens, tokens_L)
        np.testing.assert_array_equal(restored_segments, segment_ids_L)

        enc_seg, dec_seg = ex["encoder_segment_ids"], ex["segment_ids"]
        for seg in np.unique(segment_ids_L[segment_ids_L != 0]):
            tokens_n = by_segment(tokens_L, segment_ids_L, seg)
            encoder_n = by_segment(ex["encoder_inputs"], enc_seg, seg)
            targets_n = by_segment(ex["targets"], dec_seg, seg)
            is_noise = noise_flags(tokens_n, encoder_n, targets_n)
            np.testing.assert_array_equal(encoder_n[~np.isin(encoder_n, SENTINELS)], tokens_n[~is_noise])
            np.testing.assert_array_equal(targets_n[~np.isin(targets_n, SENTINELS)], tokens_n[is_noise])
            assert is_noise.sum() == math.floor(len(tokens_n) * 0.15)
            assert not is_noise[0] and (is_noise[-1] or not is_noise.any()), "kept span first, noise span last"
            np.testing.assert_array_equal(by_segment(ex["encoder_positions"], enc_seg, seg), np.arange(len(encoder_n)))
            np.testing.assert_array_equal(by_segment(ex["positions"], dec_seg, seg), np.arange(len(targets_n)))
            if len(targets_n):
                n_noisy += 1
                np.testing.assert_array_equal(by_segment(ex["decoder_inputs"], dec_seg, seg),
                                              np.concatenate([[BOS_ID], targets_n[:-1]]))
        # Segments stay in order; padding is zero everywhere.
        assert (np.diff(enc_seg[enc_seg != 0]) >= 0).all() and (np.diff(dec_seg[dec_seg != 0]) >= 0).all()
        np.testing.assert_array_equal(ex["weights"], (dec_seg != 0).astype(np.float32))
        for key, seg in [("encoder_inputs", enc_seg), ("encoder_positions", enc_seg), ("targets", dec_seg),
                         ("decoder_inputs", dec_seg), ("positions", dec_seg)]:
            assert (ex[key][seg == 0] == 0).all(), key
    assert n_noisy > 3000


def test_noise_density_and_span_length():
    rng = np.random.default_rng(1)
    noise = tokens = spans = 0
    deciles = np.zeros(10)
    span_lengths = []
    for i in range(300):
        tokens_L, segment_ids_L = packed_row(rng.integers(100, 400, 2), 1024, rng)
        ex = corrupt(tokens_L, segment_ids_L, seed=i)
        for seg in (1, 2):
            tokens_n = by_segment(tokens_L, segment_ids_L, seg)
            targets_n = by_segment(ex["targets"], ex["segment_ids"], seg)
            is_noise = noise_flags(tokens_n, by_segment(ex["encoder_inputs"], ex["encoder_segment_ids"], seg),
                                   targets_n)
            noise += is_noise.sum()
            tokens += len(tokens_n)
            deciles += np.bincount(np.flatnonzero(is_noise) * 10 // len(tokens_n), minlength=10)
            starts = np.flatnonzero(np.isin(targets_n, SENTINELS))
            span_lengths += list(np.diff(np.append(starts, len(targets_n))) - 1)
            spans += len(starts)
    assert noise / tokens == pytest.approx(0.15, abs=0.002)
    assert noise / spans == pytest.approx(3.0, abs=0.05)
    assert 1.0 < np.std(span_lengths) < 3.0, "span lengths are random, not all mean_span"
    # Noise is spread over the whole segment, plus the last span that T5's layout puts at the very end.
    share = deciles / deciles.sum()
    assert (abs(share[:9] - 0.09) < 0.015).all() and 0.13 < share[9] < 0.18, share


def test_short_segments_pass_through():
    rng = np.random.default_rng(2)
    tokens_L, segment_ids_L = packed_row([1, 2, 3, 4, 5, 6, 6], 30, rng)  # floor(n * 0.15) = 0 for n <= 6
    ex = corrupt(tokens_L, segment_ids_L)
    np.testing.assert_array_equal(ex["encoder_inputs"], tokens_L)
    np.testing.assert_array_equal(ex["encoder_segment_ids"], segment_ids_L)
    assert not ex["targets"].any() and not ex["weights"].any()


def test_same_seed_same_example():
    rng = np.random.default_rng(3)
    tokens_L, segment_ids_L = packed_row([60, 7, 40], 128, rng)
    a, b, c = (corrupt(tokens_L, segment_ids_L, seed=seed) for seed in (5, 5, 6))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["encoder_inputs"], c["encoder_inputs"])


def decoder_len(n: int, density: float, mean_span: float) -> int:
    """Decoder tokens of one segment of n tokens, measured on corrupt_row itself."""
    tokens_L, segment_ids_L = packed_row([n], n, np.random.default_rng(n))
    return int(corrupt(tokens_L, segment_ids_L, density=density, mean_span=mean_span)["weights"].sum())


@pytest.mark.parametrize(("density", "mean_span"), SETTINGS)
def test_target_length_bounds_every_segmentation(density, mean_span):
    f = [0] + [decoder_len(n, density, mean_span) for n in range(1, 41)]
    # All compositions for row_len <= 16 (padding is a segment that adds nothing, like a length-1 segment).
    for row_len in range(1, 17):
        worst = max(sum(f[b - a] for a, b in itertools.pairwise((0, *cuts, row_len)))
                    for k in range(row_len) for cuts in itertools.combinations(range(1, row_len), k))
        assert worst <= target_length(row_len, density, mean_span)
    # The exact worst case up to 40 by dynamic programming over the last segment's length.
    best, last = [0] * 41, [0] * 41
    for m in range(1, 41):
        best[m], last[m] = max((best[m - n] + f[n], n) for n in range(1, m + 1))
    for row_len in range(1, 41):
        bound = target_length(row_len, density, mean_span)
        assert best[row_len] <= bound <= best[row_len] + max(f), "bound must hold and stay within one segment"
        lengths, m = [], row_len  # build the worst row and corrupt it for real
        while m:
            lengths.append(last[m])
            m -= last[m]
        ex = corrupt(*packed_row(lengths, row_len, np.random.default_rng(row_len)), density=density,
                     mean_span=mean_span)
        assert ex["weights"].sum() == best[row_len]


@pytest.mark.parametrize(("density", "mean_span"), SETTINGS)
def test_target_length_holds_for_many_short_noisy_segments(density, mean_span):
    shortest = math.ceil(1 / density)  # the shortest segment with a noise token
    for row_len in (64, 511, 512, 2048):
        bound = target_length(row_len, density, mean_span)
        for n in range(shortest, shortest + 4):
            lengths = [n] * (row_len // n) + ([row_len % n] if row_len % n else [])
            ex = corrupt(*packed_row(lengths, row_len, np.random.default_rng(n)), density=density,
                         mean_span=mean_span)
            assert ex["weights"].sum() <= bound
            if n == shortest and row_len % n == 0:
                assert ex["weights"].sum() >= bound - 1, "the bound is reached by the shortest noisy segments"
    assert target_length(512, 0.15, 3.0) == 2 * 512 // 7  # one noise token + one sentinel per 7 tokens


def test_too_few_sentinels_or_too_short_targets_are_named():
    need = max_spans(200, 0.15, 3.0)
    assert need == max(decoder_len(n, 0.15, 3.0) - math.floor(n * 0.15) for n in range(1, 201))
    tokens_L, segment_ids_L = packed_row([200], 200, np.random.default_rng(0))
    ex = corrupt_row(tokens_L, segment_ids_L, np.random.default_rng(0), sentinel_ids=SENTINELS[:need],
                     target_len=target_length(200, 0.15, 3.0))
    assert np.isin(ex["targets"], SENTINELS[:need]).sum() == need
    with pytest.raises(ValueError, match=r"needs 10 sentinel ids, got 9: reserve max_spans"):
        corrupt_row(tokens_L, segment_ids_L, np.random.default_rng(0), sentinel_ids=SENTINELS[:need - 1],
                    target_len=100)
    with pytest.raises(ValueError, match=r"do not fit target_len=20: size it with target_length"):
        corrupt_row(tokens_L, segment_ids_L, np.random.default_rng(0), sentinel_ids=SENTINELS, target_len=20)
    with pytest.raises(ValueError, match="contains a sentinel id"):
        corrupt(np.array([BOS_ID, SENTINELS[3], EOS_ID], np.int32), np.ones(3, np.int32))
    with pytest.raises(ValueError, match="density"):
        target_length(64, 1.0, 3.0)
