"""First-fit packing: several open rows per stream instead of seqio's one.

seqio's packer (`seqio.utils.trim_and_pack_dataset`) fills one row at a time in stream order
and closes it when the next example does not fit, so every row ends with the gap that the
next example was too long to fill; on GLUE-like data that leaves 5-10% of the slots as
padding (BENCHMARKS.md, section 4). `first_fit_pack` keeps `open_rows` rows open: each
example goes into the first open row where every feature fits, and only when none has
room is the fullest row emitted and its place taken by the example. The output has exactly
seqio's packed layout (`<feature>`, `<feature>_segment_ids` from 1, `<feature>_positions`
from 0, zeros as padding), so `seqio.EncDecFeatureConverter` turns it into model features
unchanged. It is a `tf.data` scan: deterministic, in graph, and the stream's order decides
the rows, so a resumed run that skips N batches sees the batches an uninterrupted run saw.

`FirstFitEncDecFeatureConverter` is seqio's encoder-decoder converter with this packer;
`feature_converter("first_fit" | "seqio")` picks the training converter by name.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from recast import errors

DEFAULT_OPEN_ROWS = 8


def first_fit_pack(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], *,
                   open_rows: int = DEFAULT_OPEN_ROWS) -> tf.data.Dataset:
  """Trims each example's features to `feature_lengths` and packs them into rows.

  Args:
    ds: examples with 1-D integer features, at least those in `feature_lengths`; other
      features are dropped (as seqio's packer drops them).
    feature_lengths: {feature: row length}, e.g. {"inputs": 512, "targets": 114}.
    open_rows: rows filled at once. 1 is next fit, as seqio packs (without its windows);
      more rows leave less padding for a little more work per example.
  Returns:
    int32 rows: for each feature `f`, `f`, `f_segment_ids` and `f_positions`, each of
    length `feature_lengths[f]`. Every token of every (trimmed) example appears exactly
    once; finite streams end with the rows still open, fullest first.
  """
  if open_rows < 1:
    raise ValueError(f"open_rows must be at least 1, got {open_rows}")
  missing = [k for k in feature_lengths if k not in ds.element_spec]
  if missing:
    raise ValueError(f"cannot pack: the examples have no feature(s) {missing}; they have "
                     f"{sorted(ds.element_spec)}")
  keys = sorted(feature_lengths)
  lengths = {k: int(feature_lengths[k]) for k in keys}

  def trim(ex):
    return {k: tf.cast(ex[k][:lengths[k]], tf.int32) for k in keys}, tf.constant(False)

  def flush_marker(_):
    return {k: tf.zeros([0], tf.int32) for k in keys}, tf.constant(True)

  markers = tf.data.Dataset.range(open_rows).map(flush_marker)
  stream = ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE).concatenate(markers)

  row_length = {k + suffix: lengths[k] for k in keys
                for suffix in ("", "_segment_ids", "_positions")}
  row_features = list(row_length)

  # The state is the open rows themselves, {feature name: int32 [rows, length]}; how much
  # of a row is used and how many examples it holds are read off its segment ids.
  def used(state, k):
    return tf.reduce_sum(tf.cast(state[k + "_segment_ids"] > 0, tf.int32), axis=1)

  def segments(state):
    return tf.reduce_max(tf.stack([tf.reduce_max(state[k + "_segment_ids"], axis=1)
                                   for k in keys]), axis=0)

  def take_row(state, j):
    return {name: state[name][j] for name in row_features}

  def clear_row(state, j):
    return {name: tf.tensor_scatter_nd_update(value, [[j]], tf.zeros_like(value[:1]))
            for name, value in state.items()}

  def put(state, j, ex):
    state = dict(state)
    segment = segments(state)[j] + 1
    for k in keys:
      n = tf.shape(ex[k])[0]
      index = tf.stack([tf.fill([n], j), used(state, k)[j] + tf.range(n)], axis=1)
      for name, values in ((k, ex[k]), (k + "_segment_ids", tf.fill([n], segment)),
                           (k + "_positions", tf.range(n))):
        state[name] = tf.tensor_scatter_nd_update(state[name], index, values)
    return state

  def fullness(state):
    """Per row, the fraction of its most filled feature (what decides if more fits)."""
    return tf.reduce_max(tf.stack([tf.cast(used(state, k), tf.float32) / lengths[k]
                                   for k in keys]), axis=0)

  def step(state, element):
    ex, is_marker = element

    def add_example():
      fits = tf.reduce_all(tf.stack([used(state, k) + tf.shape(ex[k])[0] <= lengths[k]
                                     for k in keys]), axis=0)

      def into_first_fit():
        j = tf.cast(tf.argmax(tf.cast(fits, tf.int32)), tf.int32)
        return put(state, j, ex), tf.constant(False), take_row(state, 0)

      def close_fullest():
        j = tf.cast(tf.argmax(fullness(state)), tf.int32)
        return put(clear_row(state, j), j, ex), tf.constant(True), take_row(state, j)

      return tf.cond(tf.reduce_any(fits), into_first_fit, close_fullest)

    def flush_one():
      # Markers come after the last example: emit the fullest open row each time.
      open_rows_held = segments(state) > 0
      j = tf.cast(tf.argmax(fullness(state) + tf.cast(open_rows_held, tf.float32)), tf.int32)
      return clear_row(state, j), open_rows_held[j], take_row(state, j)

    new_state, emit, row = tf.cond(is_marker, flush_one, add_example)
    return new_state, (emit, row)

  def emitted(emit, unused_row):
    return emit

  def fixed_row(unused_emit, row):
    return {name: tf.ensure_shape(row[name], [row_length[name]]) for name in row_features}

  empty = {name: tf.zeros([open_rows, row_length[name]], tf.int32) for name in row_features}
  return stream.scan(empty, step).filter(emitted).map(fixed_row)


class FirstFitEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`seqio.EncDecFeatureConverter` whose packing is `first_fit_pack` (unpacked: seqio's
  trimming and padding, unchanged)."""

  def __init__(self, pack: bool = True, open_rows: int = DEFAULT_OPEN_ROWS, **kwargs):
    super().__init__(pack=pack, **kwargs)
    self.open_rows = open_rows

  def _pack_or_pad(self, ds: tf.data.Dataset,
                   packed_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if not self.pack:
      return super()._pack_or_pad(ds, packed_lengths)
    return first_fit_pack(ds, packed_lengths, open_rows=self.open_rows)


def feature_converter(packer: str = "first_fit", *, pack: bool = True
                      ) -> seqio.EncDecFeatureConverter:
  """The encoder-decoder converter of training: "first_fit" (this module's packer) or
  "seqio" (`seqio.utils.trim_and_pack_dataset`, T5X's). Unpacked, both pad alike."""
  if packer == "first_fit":
    return FirstFitEncDecFeatureConverter(pack=pack)
  if packer == "seqio":
    return seqio.EncDecFeatureConverter(pack=pack)
  raise errors.UserError(f"packer={packer!r} is not a packer; use 'first_fit' (recast's, "
                         "less padding) or 'seqio' (T5X's)")
