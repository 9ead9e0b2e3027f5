"""T5's unsupervised objectives as seqio preprocessors: span corruption and its alternatives.

Each objective turns a stream of tokenized text (`{"targets": int32[n]}`, no EOS) into
`{"inputs", "targets"}` pairs. The randomness is stateless and comes from seqio's seeded map
(`seqio.map_over_dataset(num_seeds=...)`), so `task.get_dataset(..., seed=S)` yields the
same examples for the same S. Worked example for span corruption (sentinels count down from
`vocab_size - 1`, T5's `<extra_id_0>`, `<extra_id_1>`, ...):

    tokens   : The cute dog walks in the park
    noise    :     ----            -- ---          (two noise spans)
    inputs   : The <X> dog walks <Y> park
    targets  : <X> cute <Y> in the

The building blocks are three kinds of small functions over one 1-D example:
noise masks (`random_spans_noise_mask`, `iid_noise_mask`, `random_prefix_noise_mask`),
token maps (`noise_span_to_unique_sentinel`, `drop_noise_tokens`, `noise_token_to_mask`,
`bert_style_corruption`, ...) and the dataset steps that prepare the stream
(`reduce_concat_tokens`, `split_tokens`). `OBJECTIVES` names the composed preprocessors.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Optional

import seqio
import tensorflow as tf

from recast import errors

# Ids below this are pad (0), EOS (1) and UNK (2) in SentencePiece and byte vocabularies;
# BERT-style random replacements never draw them.
FIRST_REGULAR_ID = 3


class ObjectiveError(errors.UserError):
  """An objective name or setting that cannot be used; the message says what to change."""


# ----------------------------------------------------------------------------- lengths


def _spans_lengths(tokens_length: int, noise_density: float,
                   mean_noise_span_length: float) -> tuple[int, int, int]:
  """(noise tokens, noise spans, non-noise tokens) for a chunk, as the noise mask makes them."""
  num_noise = min(max(int(round(tokens_length * noise_density)), 1), tokens_length - 1)
  num_nonnoise = tokens_length - num_noise
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, min(num_spans, num_noise, num_nonnoise), num_nonnoise


def random_spans_helper(*, inputs_length: int, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """Raw tokens per chunk, and the targets length, so span-corrupted examples fit exactly.

  The chunk is the longest whose corrupted inputs (non-noise tokens + one sentinel per
  noise span + EOS) fit `inputs_length`; its targets (noise tokens + one sentinel per span
  + EOS) then need exactly the returned targets length, so neither side is padded.

  >>> random_spans_helper(inputs_length=512)
  (568, 114)

  Args:
    inputs_length: the encoder length (TASK_FEATURE_LENGTHS["inputs"]).
    noise_density: fraction of the chunk's tokens that are noise.
    mean_noise_span_length: mean length of a noise span, in tokens.

  Returns:
    (tokens_length, targets_length).
  """
  if inputs_length < 3:
    raise ObjectiveError(f"span corruption needs an inputs length of at least 3, got "
                         f"{inputs_length}")

  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise, num_spans, num_nonnoise = _spans_lengths(
        tokens_length, noise_density, mean_noise_span_length)
    return num_nonnoise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths(tokens_length)[1]


# ------------------------------------------------------------------------- noise masks


def _random_composition(total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Splits `total` items into `parts` positive lengths, uniformly over all such splits.

  Args:
    total: int32 scalar, >= parts.
    parts: int32 scalar, >= 1.
    seed: int32[2] stateless seed.

  Returns:
    int32[parts], summing to `total`.
  """
  cut_points = seqio.utils.stateless_shuffle(tf.range(1, total), seed)[:parts - 1]
  bounds = tf.concat([[0], tf.sort(cut_points), [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def random_spans_noise_mask(length: tf.Tensor, *, noise_density: float,
                            mean_noise_span_length: float, seeds, **unused) -> tf.Tensor:
  """T5's span noise: alternating non-noise and noise spans, starting with non-noise.

  round(length * noise_density) tokens are noise, in round(noise / mean_noise_span_length)
  spans; noise and non-noise tokens are each split at random into that many spans.

  Args:
    length: int32 scalar, the number of tokens.
    noise_density: fraction of tokens that are noise.
    mean_noise_span_length: mean noise span length.
    seeds: two int32[2] stateless seeds.

  Returns:
    bool[length], True at noise tokens.
  """
  del unused
  orig_length = length
  length = tf.maximum(length, 2)  # a 1-token chunk still gets one noise and one kept token
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_nonnoise = length - num_noise
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length),
                      tf.int32)
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, num_nonnoise))
  noise_lengths = _random_composition(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_composition(num_nonnoise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_index = tf.repeat(tf.range(2 * num_spans), interleaved)
  return tf.equal(span_index % 2, 1)[:orig_length]


def iid_noise_mask(length: tf.Tensor, *, noise_density: float, seeds, **unused) -> tf.Tensor:
  """Each token is noise independently with probability `noise_density`; bool[length]."""
  del unused
  return tf.random.stateless_uniform([length], seed=seeds[0]) < noise_density


def random_prefix_noise_mask(length: tf.Tensor, *, seeds, **unused) -> tf.Tensor:
  """Prefix LM split: everything from a uniform split point in [1, length-1] on is noise.

  Returns:
    bool[length]: False for the prefix (>= 1 token), True for the rest (>= 1 token when
    length >= 2).
  """
  del unused
  split = tf.random.stateless_uniform([], seed=seeds[0], minval=1,
                                      maxval=tf.maximum(length, 2), dtype=tf.int32)
  return tf.range(length) >= split


# -------------------------------------------------------------------------- token maps


def _span_sentinels(tokens: tf.Tensor, noise_mask: tf.Tensor,
                    vocabulary: seqio.Vocabulary) -> tuple[tf.Tensor, tf.Tensor]:
  """(bool[n] first token of each noise span, int32[n] that span's sentinel id)."""
  previous_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  span_start = noise_mask & ~previous_is_noise
  span_number = tf.cumsum(tf.cast(span_start, tokens.dtype))
  check = tf.debugging.assert_less_equal(
      span_number[-1:], tf.cast(vocabulary.extra_ids, tokens.dtype),
      message="more noise spans than the vocabulary has sentinels (extra ids); lower "
      "noise_density or the inputs length, or raise mean_noise_span_length")
  with tf.control_dependencies([check]):
    return span_start, vocabulary.vocab_size - span_number


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, *,
                                  vocabulary: seqio.Vocabulary, **unused) -> tf.Tensor:
  """Replaces each noise span with one sentinel: vocab_size-1 for the first, then -2, ...

  Args:
    tokens: int32[n].
    noise_mask: bool[n].
    vocabulary: gives vocab_size (its extra ids are the sentinels).

  Returns:
    int32[n - noise tokens + noise spans].
  """
  del unused
  span_start, sentinels = _span_sentinels(tokens, noise_mask, vocabulary)
  tokens = tf.where(span_start, sentinels, tokens)
  return tf.boolean_mask(tokens, ~noise_mask | span_start)


def noise_spans_with_sentinels(tokens: tf.Tensor, noise_mask: tf.Tensor, *,
                               vocabulary: seqio.Vocabulary, **unused) -> tf.Tensor:
  """The targets of span corruption: each noise span, after the sentinel that replaced it
  in `noise_span_to_unique_sentinel`'s inputs.

  tokens [3, 4, 5, 6, 7], noise [F, T, T, F, T], vocab_size 100 -> [99, 4, 5, 98, 7].

  Returns:
    int32[noise tokens + noise spans].
  """
  del unused
  span_start, sentinels = _span_sentinels(tokens, noise_mask, vocabulary)
  pairs = tf.stack([sentinels, tokens], axis=1)  # [n, 2]: (sentinel, token) per position
  keep = tf.stack([span_start, noise_mask], axis=1)
  return tf.boolean_mask(pairs, keep)


def drop_noise_tokens(tokens: tf.Tensor, noise_mask: tf.Tensor, **unused) -> tf.Tensor:
  """int32[n] -> the non-noise tokens, in order."""
  del unused
  return tf.boolean_mask(tokens, ~noise_mask)


def drop_nonnoise_tokens(tokens: tf.Tensor, noise_mask: tf.Tensor, **unused) -> tf.Tensor:
  """int32[n] -> the noise tokens, in order."""
  del unused
  return tf.boolean_mask(tokens, noise_mask)


def mask_token_id(vocabulary: seqio.Vocabulary) -> int:
  """The mask token of MLM-style objectives: the first sentinel, `<extra_id_0>`."""
  if not vocabulary.extra_ids:
    raise ObjectiveError("mask-token objectives need a vocabulary with extra ids (sentinels); "
                         "build it with extra_ids=100 as T5 does")
  return vocabulary.vocab_size - 1


def noise_token_to_mask(tokens: tf.Tensor, noise_mask: tf.Tensor, *,
                        vocabulary: seqio.Vocabulary, **unused) -> tf.Tensor:
  """MASS-style: every noise token becomes the mask token; int32[n] -> int32[n]."""
  del unused
  return tf.where(noise_mask, tf.cast(mask_token_id(vocabulary), tokens.dtype), tokens)


def bert_style_corruption(tokens: tf.Tensor, noise_mask: tf.Tensor, *,
                          vocabulary: seqio.Vocabulary, seeds, **unused) -> tf.Tensor:
  """BERT's 80/10/10: of the noise tokens, 80% become the mask token, 10% a random regular
  token, 10% stay; int32[n] -> int32[n]."""
  del unused
  n = tf.size(tokens)
  choice = tf.random.stateless_uniform([n], seed=seeds[0])
  random_tokens = tf.random.stateless_uniform(
      [n], seed=seeds[1], minval=FIRST_REGULAR_ID,
      maxval=vocabulary.vocab_size - vocabulary.extra_ids, dtype=tokens.dtype)
  mask = tf.cast(mask_token_id(vocabulary), tokens.dtype)
  corrupted = tf.where(choice < 0.8, mask, tf.where(choice < 0.9, random_tokens, tokens))
  return tf.where(noise_mask, corrupted, tokens)


def shuffle_tokens(tokens: tf.Tensor, noise_mask: tf.Tensor, *, seeds, **unused) -> tf.Tensor:
  """Deshuffling's inputs: a uniformly random permutation of the tokens (mask unused)."""
  del noise_mask, unused
  return seqio.utils.stateless_shuffle(tokens, seeds[0])


def keep_tokens(tokens: tf.Tensor, noise_mask: tf.Tensor, **unused) -> tf.Tensor:
  """Targets that are the original sequence (mask unused)."""
  del noise_mask, unused
  return tokens


# ----------------------------------------------------------------- stream preparation


def reduce_concat_tokens(dataset: tf.data.Dataset, *, feature_key: str = "targets",
                         batch_size: int = 128) -> tf.data.Dataset:
  """Concatenates the `feature_key` tokens of each `batch_size` consecutive examples.

  {"targets": [3, 4]}, {"targets": [5]}, {"targets": [6, 7]} with batch_size=2 ->
  {"targets": [3, 4, 5]}, {"targets": [6, 7]}. Other features are dropped.
  """
  dataset = dataset.map(lambda ex: ex[feature_key], num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.ragged_batch(batch_size)
  return dataset.map(lambda r: {feature_key: r.flat_values},
                     num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, *, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Cuts each example's `feature_key` into consecutive pieces of `max_tokens_per_segment`.

  {"targets": [3, 4, 5, 6, 7]} with max_tokens_per_segment=2 ->
  {"targets": [3, 4]}, {"targets": [5, 6]}, {"targets": [7]}. Empty examples vanish.
  """
  if max_tokens_per_segment < 1:
    raise ObjectiveError(f"max_tokens_per_segment must be >= 1, got {max_tokens_per_segment}")

  def pieces(ex):
    tokens = ex[feature_key]
    n = tf.size(tokens, out_type=tf.int64)
    starts = tf.range(0, n, max_tokens_per_segment, dtype=tf.int64)
    ragged = tf.RaggedTensor.from_row_starts(tokens, starts)
    return tf.data.Dataset.from_tensor_slices({feature_key: ragged})

  return dataset.flat_map(pieces)


# ------------------------------------------------------------------------ objectives


NoiseMaskFn = Callable[..., tf.Tensor]
TokenMapFn = Callable[..., tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Objective:
  """One pretraining objective: how to chunk the text, which tokens are noise, and what
  the inputs and targets are made of.

  Attributes:
    name: the suffix of derived task names (`glue_sst2_<name>`).
    noise_mask_fn: (length, noise_density=, mean_noise_span_length=, seeds=) -> bool[n].
    inputs_fn, targets_fn: (tokens, noise_mask, vocabulary=, seeds=) -> int32[m].
    noise_density, mean_noise_span_length: the noise settings.
    chunk_by_spans_helper: chunk to `random_spans_helper`'s tokens length (span objectives,
      whose inputs are shorter than the chunk) instead of inputs length - 1.
    description: one line for `recast tasks` and the docs.
  """
  name: str
  noise_mask_fn: NoiseMaskFn
  inputs_fn: TokenMapFn
  targets_fn: TokenMapFn
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  chunk_by_spans_helper: bool = False
  description: str = ""

  def tokens_length(self, inputs_length: int) -> int:
    """Raw tokens per chunk for an encoder length of `inputs_length` (EOS included)."""
    if self.chunk_by_spans_helper:
      return random_spans_helper(inputs_length=inputs_length,
                                 noise_density=self.noise_density,
                                 mean_noise_span_length=self.mean_noise_span_length)[0]
    return max(inputs_length - 1, 1)

  def min_targets_length(self, inputs_length: int) -> Optional[int]:
    """The targets length (EOS included) that holds every example at `inputs_length`
    without cutting it; None where the targets length is random (i.i.d. drop/replace)."""
    if self.chunk_by_spans_helper:
      return random_spans_helper(inputs_length=inputs_length,
                                 noise_density=self.noise_density,
                                 mean_noise_span_length=self.mean_noise_span_length)[1]
    if self.targets_fn is keep_tokens or self.noise_mask_fn is random_prefix_noise_mask:
      return inputs_length
    return None

  def check_sentinels(self, *, inputs_length: int, vocabulary: seqio.Vocabulary) -> None:
    """Raises ObjectiveError when chunks would need more sentinels than the vocabulary has
    (exactly for span corruption; 4 standard deviations above the mean for i.i.d. noise)."""
    if noise_span_to_unique_sentinel not in (self.inputs_fn, self.targets_fn):
      return
    n = self.tokens_length(inputs_length)
    if self.chunk_by_spans_helper:
      spans = _spans_lengths(n, self.noise_density, self.mean_noise_span_length)[1]
    else:  # a noise run starts at a token with probability p(1-p)
      q = self.noise_density * (1 - self.noise_density)
      spans = int(math.ceil(n * q + 4 * math.sqrt(n * q)))
    if spans > vocabulary.extra_ids:
      raise ObjectiveError(
          f"{self.name} at inputs length {inputs_length} needs up to {spans} sentinels but "
          f"the vocabulary has {vocabulary.extra_ids} extra ids; lower the inputs length or "
          "noise_density, or raise mean_noise_span_length")

  def corrupt(self, tokens: tf.Tensor, *, vocabulary: seqio.Vocabulary,
              seeds) -> dict[str, tf.Tensor]:
    """One chunk int32[n] -> {"inputs": int32[a], "targets": int32[b]} (no EOS).

    Args:
      tokens: int32[n] raw tokens.
      vocabulary: the task vocabulary (sentinels, mask token, random tokens).
      seeds: four int32[2] stateless seeds (two for the mask, two for the token maps).
    """
    noise_mask = self.noise_mask_fn(
        tf.size(tokens), noise_density=self.noise_density,
        mean_noise_span_length=self.mean_noise_span_length, seeds=seeds[:2])
    return {
        "inputs": self.inputs_fn(tokens, noise_mask, vocabulary=vocabulary, seeds=seeds[2:]),
        "targets": self.targets_fn(tokens, noise_mask, vocabulary=vocabulary,
                                   seeds=seeds[2:]),
    }

  def preprocessor(self) -> Callable[..., tf.data.Dataset]:
    """The seqio preprocessor (dataset, sequence_length, output_features) -> dataset."""
    return functools.partial(apply_objective, objective=self)


def _all_noise_mask(length, **unused):
  del unused
  return tf.ones([length], tf.bool)


def span_corruption_objective(*, noise_density: float = 0.15,
                              mean_noise_span_length: float = 3.0,
                              name: str = "span_corruption") -> Objective:
  """Span corruption (T5's "random spans") at any density and mean span length."""
  if not 0.0 < noise_density < 1.0:
    raise ObjectiveError(f"noise_density must be in (0, 1), got {noise_density}")
  if mean_noise_span_length < 1.0:
    raise ObjectiveError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")
  return Objective(
      name=name, noise_mask_fn=random_spans_noise_mask,
      inputs_fn=noise_span_to_unique_sentinel, targets_fn=noise_spans_with_sentinels,
      noise_density=noise_density, mean_noise_span_length=mean_noise_span_length,
      chunk_by_spans_helper=True,
      description=f"random spans (density {noise_density:g}, mean length "
      f"{mean_noise_span_length:g}) -> sentinels; targets = sentinels + dropped spans")


OBJECTIVES: dict[str, Objective] = {
    "span_corruption": span_corruption_objective(),
    "prefix_lm": Objective(
        name="prefix_lm", noise_mask_fn=random_prefix_noise_mask,
        inputs_fn=drop_noise_tokens, targets_fn=drop_nonnoise_tokens, noise_density=0.5,
        description="inputs = a random-length prefix, targets = the rest"),
    "bert_mlm": Objective(
        name="bert_mlm", noise_mask_fn=iid_noise_mask, inputs_fn=bert_style_corruption,
        targets_fn=keep_tokens,
        description="BERT-style: 15% of tokens, 80% mask / 10% random / 10% kept; targets = "
        "the original"),
    "deshuffling": Objective(
        name="deshuffling", noise_mask_fn=_all_noise_mask, inputs_fn=shuffle_tokens,
        targets_fn=keep_tokens, noise_density=1.0,
        description="inputs = the tokens shuffled, targets = the original"),
    "iid_mask_tokens": Objective(
        name="iid_mask_tokens", noise_mask_fn=iid_noise_mask, inputs_fn=noise_token_to_mask,
        targets_fn=keep_tokens,
        description="MASS-style: i.i.d. 15% of tokens -> mask token; targets = the original"),
    "iid_replace_spans": Objective(
        name="iid_replace_spans", noise_mask_fn=iid_noise_mask,
        inputs_fn=noise_span_to_unique_sentinel, targets_fn=noise_spans_with_sentinels,
        description="i.i.d. 15% noise; each noise run -> a sentinel; targets = sentinels + "
        "dropped tokens"),
    "iid_drop_tokens": Objective(
        name="iid_drop_tokens", noise_mask_fn=iid_noise_mask, inputs_fn=drop_noise_tokens,
        targets_fn=drop_nonnoise_tokens,
        description="i.i.d. 15% of tokens dropped from the inputs; targets = the dropped"),
}


def get_objective(name: str) -> Objective:
  """The objective called `name`: a key of OBJECTIVES, or `random_spans_d<D>_l<L>` for span
  corruption at density D percent and mean span length L (`random_spans_d50_l10`)."""
  if name in OBJECTIVES:
    return OBJECTIVES[name]
  params = parse_random_spans_name(name)
  if params is not None:
    return span_corruption_objective(name=name, **params)
  raise ObjectiveError(f"unknown pretraining objective {name!r}; available: "
                       f"{', '.join(OBJECTIVES)}, random_spans_d<percent>_l<mean length> "
                       "(e.g. random_spans_d25_l10)")


def random_spans_name(*, noise_density: float, mean_noise_span_length: float) -> str:
  """The objective name for span corruption at these settings (inverse of get_objective)."""
  percent = round(noise_density * 100, 6)
  return f"random_spans_d{percent:g}_l{mean_noise_span_length:g}"


def parse_random_spans_name(name: str) -> Optional[dict[str, float]]:
  """{"noise_density", "mean_noise_span_length"} from `random_spans_d<D>_l<L>`, else None."""
  prefix = "random_spans_d"
  if not name.startswith(prefix) or "_l" not in name[len(prefix):]:
    return None
  density, _, length = name[len(prefix):].partition("_l")
  try:
    return {"noise_density": float(density) / 100, "mean_noise_span_length": float(length)}
  except ValueError:
    return None


def apply_objective(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature], *, objective: Objective,
                    concat_batch_size: int = 128) -> tf.data.Dataset:
  """seqio preprocessor: tokenized text -> concatenated, chunked, corrupted examples.

  Put it after `seqio.preprocessors.tokenize` (no EOS) and before
  `seqio.preprocessors.append_eos_after_trim`, which adds the EOS that
  `random_spans_helper` counts.

  Args:
    dataset: {"targets": int32[n]} per document.
    sequence_length: {"inputs": encoder length, ...}; fixes the chunk length.
    output_features: the task's features; "targets" gives the vocabulary.
    objective: what to do to each chunk.
    concat_batch_size: documents concatenated before chunking.

  Returns:
    {"inputs": int32[a], "targets": int32[b]} per chunk, without EOS.
  """
  if sequence_length is None or sequence_length.get("inputs") is None:
    raise ObjectiveError(f"the {objective.name} objective needs an inputs length to chunk "
                         "the text: set TASK_FEATURE_LENGTHS = {'inputs': ..., 'targets': ...}")
  targets_length = sequence_length.get("targets")
  needed = objective.min_targets_length(sequence_length["inputs"])
  if targets_length is not None and needed is not None and targets_length < needed:
    raise ObjectiveError(
        f"the {objective.name} objective at inputs length {sequence_length['inputs']} makes "
        f"targets of up to {needed} tokens, but the targets length is {targets_length}: set "
        f"TASK_FEATURE_LENGTHS = {{'inputs': {sequence_length['inputs']}, 'targets': "
        f"{needed}}}")
  vocabulary = output_features["targets"].vocabulary
  objective.check_sentinels(inputs_length=sequence_length["inputs"], vocabulary=vocabulary)
  dataset = reduce_concat_tokens(dataset, feature_key="targets", batch_size=concat_batch_size)
  dataset = split_tokens(dataset, feature_key="targets",
                         max_tokens_per_segment=objective.tokens_length(
                             sequence_length["inputs"]))

  @seqio.map_over_dataset(num_seeds=4)
  def corrupt(features, seeds):
    return objective.corrupt(features["targets"], vocabulary=vocabulary, seeds=seeds)

  return corrupt(dataset)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature], *,
                    noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
  """T5's span corruption as a seqio preprocessor (see `apply_objective`)."""
  return apply_objective(dataset, sequence_length, output_features,
                         objective=span_corruption_objective(
                             noise_density=noise_density,
                             mean_noise_span_length=mean_noise_span_length))
