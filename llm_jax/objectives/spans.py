"""T5-style span corruption on one packed row, per document segment so that packed documents never mix.

Each segment of n tokens gets floor(n * density) noise tokens in num_spans spans (about `mean_span` long) at random
places. The encoder sees the segment with each noise span replaced by one sentinel id; the decoder predicts
sentinel 0, noise span 0, sentinel 1, noise span 1, ... A segment too short for one noise token goes to the
encoder unchanged and gives the decoder nothing. Sentinels restart at the first id in every segment, so a caller
reserves `max_spans` ids (never produced by the tokenizer) and sizes the decoder with `target_length`.
"""

from collections.abc import Sequence

import numpy as np

from llm_jax.data.tokenizer import DEFAULT_SPECIALS

Example = dict[str, np.ndarray]


def _noise_and_spans(n, density: float, mean_span: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise tokens and noise spans for segments of n tokens (arrays, elementwise). corrupt_row, max_spans and
    target_length all call this one function, so the bounds hold exactly, float rounding included."""
    n = np.asarray(n, np.int64)
    noise = np.floor(n * density).astype(np.int64)
    spans = np.clip(np.rint(noise / mean_span).astype(np.int64), 1, np.minimum(noise, n - noise))
    return noise, np.where(noise > 0, spans, 0)


def _check(density: float, mean_span: float) -> None:
    if not 0 < density < 1 or mean_span < 1:
        raise ValueError(f"span corruption needs 0 < density < 1 (got {density}) and mean_span >= 1 "
                         f"(got {mean_span})")


def max_spans(row_len: int, density: float, mean_span: float) -> int:
    """The most sentinels one segment can need: a caller reserves this many ids."""
    _check(density, mean_span)
    return int(_noise_and_spans(np.arange(1, row_len + 1), density, mean_span)[1].max())


def target_length(row_len: int, density: float, mean_span: float) -> int:
    """An upper bound of the decoder length of any row of row_len tokens, however it is cut into segments.

    A segment of n tokens adds f(n) = noise(n) + spans(n) decoder tokens (0 when noise(n) = 0), and a row's
    segments have lengths n_i with sum n_i <= row_len. Let r = max over 1 <= n <= row_len of f(n) / n. Then
        sum f(n_i) = sum n_i * (f(n_i) / n_i) <= r * sum n_i <= r * row_len,
    and the sum is an integer, so it is at most floor(r * row_len) = max_n floor(f(n) * row_len / n) (computed
    in integers, exactly). Short segments have the best ratio: one noise token needs n >= ceil(1 / density) and
    then costs a sentinel too. The bound is within f(n*) of a real row: floor(row_len / n*) segments of the best
    length n* reach floor(row_len / n*) * f(n*). With density 0.15 and mean_span 3, n* = 7, f = 2: floor(2L / 7),
    exact when 7 divides L (plain 0.15 * L * (1 + 1 / 3) = 0.2 * L would be too small).
    """
    _check(density, mean_span)
    n = np.arange(1, row_len + 1)
    noise, spans = _noise_and_spans(n, density, mean_span)
    return int(((noise + spans) * row_len // n).max())


def _random_parts(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive integers, uniformly over all such splits (T5's random segmentation)."""
    if parts == 1:
        return np.array([total], np.int64)
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def _corrupt_segment(tokens_n: np.ndarray, rng: np.random.Generator, sentinels: np.ndarray, density: float,
                     mean_span: float) -> tuple[np.ndarray, np.ndarray]:
    """(encoder inputs, decoder targets) of one segment."""
    noise, spans = (int(x) for x in _noise_and_spans(len(tokens_n), density, mean_span))
    if noise == 0:
        return tokens_n, tokens_n[:0]
    if spans > len(sentinels):
        raise ValueError(f"a segment of {len(tokens_n)} tokens needs {spans} sentinel ids, got {len(sentinels)}: "
                         "reserve max_spans(row_len, density, mean_span) ids")
    keep_S = _random_parts(len(tokens_n) - noise, spans, rng)
    noise_S = _random_parts(noise, spans, rng)
    # The segment is keep 0, noise 0, keep 1, noise 1, ...: it starts with kept tokens and ends with noise.
    is_noise_n = np.repeat(np.tile([False, True], spans), np.stack([keep_S, noise_S], axis=1).reshape(-1))
    encoder = np.insert(tokens_n[~is_noise_n], np.cumsum(keep_S), sentinels[:spans])
    targets = np.insert(tokens_n[is_noise_n], np.cumsum(noise_S) - noise_S, sentinels[:spans])
    return encoder, targets


def _segments(segment_ids_L: np.ndarray) -> list[tuple[int, int, int]]:
    """(segment id, start, end) of each run of one nonzero segment id."""
    bounds = np.flatnonzero(np.diff(segment_ids_L)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(segment_ids_L)]])
    return [(int(segment_ids_L[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True) if segment_ids_L[s]]


def _pack(pieces: list[tuple[int, np.ndarray]], length: int, first: int | None = None) -> tuple[np.ndarray, ...]:
    """Concatenate (segment id, tokens) pieces, zero padded to `length`: tokens, segment ids, positions and, if
    `first` is given, the tokens shifted right by one per piece with `first` in front (decoder inputs)."""
    out = np.zeros((4, length), np.int32)
    at = 0
    for seg, toks in pieces:
        end = at + len(toks)
        out[0, at:end] = toks
        out[1, at:end] = seg
        out[2, at:end] = np.arange(len(toks))
        if first is not None:
            out[3, at:end] = np.concatenate([[first], toks[:-1]])
        at = end
    return tuple(out)


def corrupt_row(tokens_L: np.ndarray, segment_ids_L: np.ndarray, rng: np.random.Generator, *,
                sentinel_ids: Sequence[int], density: float = 0.15, mean_span: float = 3.0, target_len: int,
                decoder_start: int = DEFAULT_SPECIALS.decoder_start) -> Example:
    """One span-corruption example. int32 [L]: encoder_inputs, encoder_segment_ids, encoder_positions (the
    segments' corrupted inputs end to end, positions restarting per segment, zero padded). int32 [target_len]:
    decoder_inputs, targets, segment_ids, positions; float32 [target_len]: weights (1.0 on real targets). Each
    segment's decoder inputs are its targets shifted right behind `decoder_start` (the tokenizer's)."""
    _check(density, mean_span)
    tokens_L = np.asarray(tokens_L, np.int32)
    segment_ids_L = np.asarray(segment_ids_L, np.int32)
    sentinels = np.asarray(sentinel_ids, np.int32)
    if np.isin(tokens_L[segment_ids_L != 0], sentinels).any():
        raise ValueError("the row contains a sentinel id: sentinel_ids must be ids the tokenizer never produces")
    encoder, decoder = [], []
    for seg, start, end in _segments(segment_ids_L):
        enc, tgt = _corrupt_segment(tokens_L[start:end], rng, sentinels, density, mean_span)
        encoder.append((seg, enc))
        if len(tgt):
            decoder.append((seg, tgt))
    n_targets = sum(len(t) for _, t in decoder)
    if n_targets > target_len:
        raise ValueError(f"{n_targets} decoder targets do not fit target_len={target_len}: size it with "
                         f"target_length(row_len, density, mean_span)")
    enc_tokens, enc_segments, enc_positions, _ = _pack(encoder, len(tokens_L))
    targets, segments, positions, dec_inputs = _pack(decoder, target_len, first=decoder_start)
    return {"encoder_inputs": enc_tokens, "encoder_segment_ids": enc_segments, "encoder_positions": enc_positions,
            "decoder_inputs": dec_inputs, "targets": targets, "segment_ids": segments, "positions": positions,
            "weights": (np.arange(target_len) < n_targets).astype(np.float32)}


def uncorrupt(example: Example, sentinel_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The original (tokens_L, segment_ids_L) of an example: each sentinel in a segment's encoder inputs is
    replaced by the tokens that follow the same sentinel in that segment's targets."""
    enc, enc_seg = example["encoder_inputs"], example["encoder_segment_ids"]
    tgt, tgt_seg = example["targets"], example["segment_ids"]
    sentinels = np.asarray(sentinel_ids)
    tokens, segment_ids = [], []
    for seg, start, end in _segments(enc_seg):
        spans = np.split(tgt[tgt_seg == seg], np.flatnonzero(np.isin(tgt[tgt_seg == seg], sentinels)))[1:]
        noise = {int(span[0]): span[1:] for span in spans}
        pieces = np.split(enc[start:end], np.flatnonzero(np.isin(enc[start:end], sentinels)))
        restored = np.concatenate([pieces[0]] + [np.concatenate([noise[int(p[0])], p[1:]]) for p in pieces[1:]])
        tokens.append(restored)
        segment_ids.append(np.full(len(restored), seg))
    tokens_L = np.zeros(len(enc), np.int32)
    segment_ids_L = np.zeros(len(enc), np.int32)
    n = sum(len(t) for t in tokens)
    if n:
        tokens_L[:n] = np.concatenate(tokens)
        segment_ids_L[:n] = np.concatenate(segment_ids)
    return tokens_L, segment_ids_L
