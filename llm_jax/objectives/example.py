"""The example: the arrays one row of a batch carries, stated once per objective.

The data pipeline makes examples (objectives turn packed rows into them), and the train step, the evaluator, the
planner and state creation read them through `ExampleSpec`; nothing else re-derives their shapes.

Every objective's example has `targets` and `weights` (float32 loss weight per target, 0 for padding and for
tokens the loss ignores) and the model's inputs:
  decoder, encoder     inputs, segment_ids, positions [L]          (+ prefix [L] for prefix LM: 1 in the prefix)
  encoder_decoder      encoder_inputs, encoder_segment_ids, encoder_positions [L];
                       decoder_inputs, segment_ids, positions, targets, weights [T]
Segment ids number the documents packed in a row (1, 2, ...; 0 is padding); positions restart at 0 in each.
"""

import dataclasses

import jax
import numpy as np

from llm_jax.data.packing import positions_from_segments

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    fields: tuple[tuple[str, int, str], ...]  # (name, length, dtype) per array of one example

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.fields)

    def zeros(self, batch: int = 1) -> dict[str, np.ndarray]:
        """A batch of zeros of the right shapes (for initialising a model)."""
        return {name: np.zeros((batch, length), dtype) for name, length, dtype in self.fields}

    def abstract(self, batch: int, sharding=None) -> dict[str, jax.ShapeDtypeStruct]:
        """A batch as shapes (and shardings): what the planner compiles against."""
        return {name: jax.ShapeDtypeStruct((batch, length), np.dtype(dtype), sharding=sharding)
                for name, length, dtype in self.fields}

    def check(self, example: Example) -> None:
        """An example made by an objective has exactly these arrays (a programming error otherwise)."""
        got = {k: (tuple(v.shape), np.dtype(v.dtype).name) for k, v in example.items()}
        want = {name: ((length,), np.dtype(dtype).name) for name, length, dtype in self.fields}
        if got != want:
            raise ValueError(f"example arrays {got} differ from the objective's spec {want}")


def token_fields(length: int, *extra: str) -> tuple[tuple[str, int, str], ...]:
    """The fields of a decoder or encoder example of `length` tokens (plus int32 `extra` ones)."""
    ints = ("inputs", "targets", "segment_ids", "positions", *extra)
    return (*((name, length, "int32") for name in ints), ("weights", length, "float32"))



def positions(segment_ids_L: np.ndarray) -> np.ndarray:
    """Position of each token in its document piece (restarting at 0 where the segment id changes)."""
    return positions_from_segments(segment_ids_L[None])[0]
