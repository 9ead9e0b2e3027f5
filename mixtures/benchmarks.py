"""GLUE and SuperGLUE as T5's multitask mixtures, their variants, and leave-one-out.

Registered on import (rates: mixtures/rates.py; e_n = train examples of task n):

  glue                 cola sst2 mrpc qqp stsb mnli qnli rte wnli, examples-proportional
                       (no cap, T5's `glue_v002_proportional`; T5 leaves out WNLI, here it
                       is in, at 0.07% of the samples), plus the eval-only tasks
                       glue_mnli_matched / glue_mnli_mismatched at rate 0 (as T5: they are
                       evaluated, never sampled), so the GLUE score can be computed
  super_glue           boolq cb copa multirc record rte wic wsc, examples-proportional
  glue_super_glue      every task of both, flat, examples-proportional (T5's "all" mixture
                       for the GLUE/SuperGLUE part)
  glue_and_super_glue  a mixture of mixtures: half of the samples from `glue`, half from
                       `super_glue`, proportional inside each
  <name>_equal         the same members, equal mixing
  <name>_temperature   the same members, T5's best temperature T=2 (cap K=2^19)

`leave_one_out(mixture=..., task=...)` registers `<mixture>_without_<task>` (T5's
leave-one-out multitask training) and `multitask_pretraining(mixture=..., corpus_task=...)`
registers `<mixture>_with_<corpus_task>` (T5's multitask pretraining: supervised tasks
plus an unsupervised objective, K=2^19); each returns the name, and gin files call them as
`@mixtures.leave_one_out()` / `@mixtures.multitask_pretraining()`.

    >>> rates.normalized_rates(seqio.get_mixture_or_task("glue"))["glue_rte"]
    0.00262...   # 2490 / (8551 + 67349 + 3668 + 363846 + 5749 + 392702 + 104743 + 2490 + 635)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import gin
import seqio

import recast.tasks  # noqa: F401  (registers every member task)
from recast.tasks import pretraining
from recast.mixtures import rates

GLUE = ("glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli",
        "glue_qnli", "glue_rte", "glue_wnli")
SUPER_GLUE = ("super_glue_boolq", "super_glue_cb", "super_glue_copa", "super_glue_multirc",
              "super_glue_record", "super_glue_rte", "super_glue_wic", "super_glue_wsc")
# MNLI's validation sets as eval-only tasks whose `validation` split is the matched or
# mismatched one (T5's glue_mnli_matched_v002 / glue_mnli_mismatched_v002).
MNLI_EVAL_SPLITS = {"glue_mnli_matched": "validation_matched",
                    "glue_mnli_mismatched": "validation_mismatched"}
TEMPERATURE = 2.0
TEMPERATURE_MAXIMUM = 2**19


class RenamedSplitSource(seqio.DataSource):
  """Another source's splits under new names: {"validation": "validation_matched"}."""

  def __init__(self, base: seqio.DataSource, split_names: Mapping[str, str]):
    self.base = base
    self.split_names = dict(split_names)
    super().__init__(splits=tuple(self.split_names), num_input_examples=None,
                     caching_permitted=base.caching_permitted)

  @property
  def splits(self) -> Sequence[str]:
    """The new names whose base split exists (with local files: has a file)."""
    available = set(self.base.splits)
    return tuple(new for new, old in self.split_names.items() if old in available)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self.base.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self.base.list_shards(self.split_names[split])

  def get_dataset(self, split: str = "validation", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, **kwargs: Any):
    return self.base.get_dataset(self.split_names[split], shuffle=shuffle, seed=seed,
                                 shard_info=shard_info, **kwargs)

  def num_input_examples(self, split: str) -> Optional[int]:
    return self.base.num_input_examples(self.split_names[split])

  def __repr__(self) -> str:
    return f"RenamedSplitSource({self.base!r}, {self.split_names})"

  def describe(self) -> str:
    """What `recast tasks list` prints for the source."""
    describe = getattr(self.base, "describe", None)
    shown = describe() if describe else repr(self.base)
    return f"{shown} ({', '.join(f'{n}={o}' for n, o in self.split_names.items())})"


def register_split_alias(name: str, base_task: str, split_names: Mapping[str, str]
                         ) -> seqio.Task:
  """Registers task `name`: `base_task` (same preprocessing, postprocessing and metrics)
  read from renamed splits. Idempotent."""
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  base = seqio.TaskRegistry.get(base_task)
  return seqio.TaskRegistry.add(
      name, source=RenamedSplitSource(base.source, split_names),
      output_features=base.output_features, preprocessors=base.preprocessors,
      postprocess_fn=base.postprocessor, metric_fns=base.metric_fns)


def add_mixture(name: str, members: Sequence[Any], *, default_rate: Any = None
                ) -> seqio.Mixture:
  """Registers a mixture (members: names or (name, rate)); an existing one is replaced."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(members), default_rate=default_rate)


# Each named mixture has three variants: "" (examples-proportional), _equal, _temperature.
def strategies(maximum: Optional[int] = None) -> dict[str, Any]:
  """{suffix: rate}: examples-proportional (cap `maximum`), equal, temperature T=2."""
  return {"": rates.examples_proportional(maximum),
          "_equal": rates.equal,
          "_temperature": rates.temperature_scaled(
              TEMPERATURE, maximum=maximum or TEMPERATURE_MAXIMUM)}


def add_mixture_variants(name: str, members: Sequence[str], *,
                         maximum: Optional[int] = None,
                         eval_only: Sequence[str] = ()) -> list[str]:
  """Registers `name`, `name_equal` and `name_temperature`; `eval_only` tasks join each at
  rate 0 (evaluated, never sampled). Returns the mixture names."""
  names = []
  for suffix, rate in strategies(maximum).items():
    add_mixture(name + suffix, [(m, rate) for m in members]
                + [(t, 0.0) for t in eval_only])
    names.append(name + suffix)
  return names


@gin.configurable(module="mixtures")
def leave_one_out(mixture: str = gin.REQUIRED, task: str = gin.REQUIRED) -> str:
  """Registers `<mixture>_without_<task>`: `mixture`'s members and rates, less `task`.

  For T5's leave-one-out study: multitask training on every task but the target, then
  fine-tuning on the target. `mixture` must list tasks directly (no sub-mixtures).
  """
  base = seqio.get_mixture_or_task(mixture)
  if not isinstance(base, seqio.Mixture):
    raise rates.MixingRateError(f"{mixture!r} is a task; leave_one_out needs a mixture")
  members = dict(base.rate_per_task_name)
  if any(name in seqio.MixtureRegistry.names() for name in members):
    raise rates.MixingRateError(
        f"mixture {mixture!r} holds sub-mixtures; leave_one_out needs one that lists its "
        "tasks (e.g. glue_super_glue, not glue_and_super_glue)")
  if task not in members:
    raise rates.MixingRateError(f"task {task!r} is not in mixture {mixture!r}; members: "
                                f"{', '.join(sorted(members))}")
  name = f"{mixture}_without_{task}"
  add_mixture(name, [(m, r) for m, r in members.items() if m != task])
  return name


@gin.configurable(module="mixtures")
def multitask_pretraining(mixture: str = gin.REQUIRED, corpus_task: str = gin.REQUIRED,
                          maximum: int = 2**19) -> str:
  """Registers `<mixture>_with_<corpus_task>` and returns its name: T5's multitask
  pretraining mixture, examples-proportional with cap K=`maximum` over the supervised
  tasks of `mixture` and an unsupervised objective task (`wikipedia_en_span_corruption`).

  The corpus is far larger than K (T5: C4), so its rate is K itself, min(e, K) = K.
  Eval-only members (rate 0) stay at rate 0. `mixture` must list tasks directly.
  """
  pretraining.ensure_pretraining_task(corpus_task)  # derived tasks register on first use
  base = seqio.get_mixture_or_task(mixture)
  if not isinstance(base, seqio.Mixture) or any(
      name in seqio.MixtureRegistry.names() for name in base.rate_per_task_name):
    raise rates.MixingRateError(f"{mixture!r} must be a mixture that lists its tasks")
  if corpus_task not in seqio.TaskRegistry.names():
    raise rates.MixingRateError(f"no task {corpus_task!r} for the unsupervised objective; "
                                "e.g. wikipedia_en_span_corruption")
  proportional = rates.examples_proportional(maximum)
  members = [(m, 0.0 if r == 0 else proportional) for m, r in base.rate_per_task_name.items()]
  name = f"{mixture}_with_{corpus_task}"
  add_mixture(name, members + [(corpus_task, float(maximum))])
  return name


for _name, _split in MNLI_EVAL_SPLITS.items():
  register_split_alias(_name, "glue_mnli", {"validation": _split})

add_mixture_variants("glue", GLUE, eval_only=tuple(MNLI_EVAL_SPLITS))
add_mixture_variants("super_glue", SUPER_GLUE)
add_mixture_variants("glue_super_glue", GLUE + SUPER_GLUE,
                     eval_only=tuple(MNLI_EVAL_SPLITS))
add_mixture("glue_and_super_glue", [("glue", 1.0), ("super_glue", 1.0)])
