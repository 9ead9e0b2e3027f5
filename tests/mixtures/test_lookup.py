"""mixtures.lookup: the one name lookup every command shares (registered and derived names)."""

import pytest
import seqio

from recast.mixtures import lookup


@pytest.fixture
def forget_derived():
  """Leaves the registry as it was (other tests walk every registered task)."""
  before = set(seqio.TaskRegistry.names())
  yield
  for name in set(seqio.TaskRegistry.names()) - before:
    seqio.TaskRegistry.remove(name)


def test_derived_pretraining_task_resolves_on_first_use(forget_derived):
  task = lookup.get_mixture_or_task("glue_rte_prefix_lm")
  assert isinstance(task, seqio.Task) and task.name == "glue_rte_prefix_lm"
  assert "glue_rte_prefix_lm" in lookup.registered_names()
  assert lookup.get_mixture_or_task("glue") is seqio.get_mixture_or_task("glue")


def test_typo_in_a_derived_name_suggests_the_derived_task():
  with pytest.raises(lookup.UnknownTaskError,
                     match=r"'glue_cola_span_coruption'; did you mean glue_cola_span_corruption"):
    lookup.get_mixture_or_task("glue_cola_span_coruption")
  assert "glue_cola_span_coruption" not in seqio.TaskRegistry.names()


def test_unknown_name_without_close_match_says_how_to_list():
  with pytest.raises(lookup.UnknownTaskError, match=r"are registered; list them with `recast "
                     r"tasks list`"):
    lookup.get_mixture_or_task("qqqqqqqqqqqqqqqq")
