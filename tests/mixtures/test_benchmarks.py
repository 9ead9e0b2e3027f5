"""Named mixtures: members, T5's examples-proportional rates from real split sizes (through
`recast tasks show MIXTURE --json`), mixtures of mixtures, MNLI's eval-only tasks,
leave-one-out and multitask-pretraining mixtures."""

import json

import gin
import pytest
import seqio

from recast import mixtures
from recast.mixtures import benchmarks, rates, studies
from recast.tasks import dspt, recycling
from recast import cli

# Train split sizes: ../shared/data (SOURCES.md) for the six GLUE tasks there, TFDS's
# recorded sizes for QQP, MNLI and QNLI.
GLUE_TRAIN = {"glue_cola": 8551, "glue_sst2": 67349, "glue_mrpc": 3668, "glue_qqp": 363846,
              "glue_stsb": 5749, "glue_mnli": 392702, "glue_qnli": 104743,
              "glue_rte": 2490, "glue_wnli": 635}
NOT_LOCAL = "{'glue_qqp': 'tfds', 'glue_mnli': 'tfds', 'glue_qnli': 'tfds'}"


@pytest.fixture(autouse=True)
def no_gin_bindings_left():
  """The CLI binds DATA_DIR in gin (global); later tests read the recorded sizes."""
  yield
  gin.clear_config()


def _show_json(capsys, name, *flags):
  code = cli.main(["tasks", "show", name, "--json", *flags])
  out, err = capsys.readouterr()
  assert code == 0, err
  return json.loads(out)


def test_glue_rates_from_real_split_sizes(shared_data, capsys):
  shown = _show_json(capsys, "glue", "-n", "1", f"--gin.DATA_DIR='{shared_data}'",
                     f"--gin.TASK_DATA_DIRS={NOT_LOCAL}")
  total = sum(GLUE_TRAIN.values())
  assert total == 949733
  assert set(shown["rates"]) == set(GLUE_TRAIN) | {"glue_mnli_matched", "glue_mnli_mismatched"}
  for task, count in GLUE_TRAIN.items():
    assert shown["rates"][task]["rate"] == count
    assert shown["rates"][task]["fraction"] == pytest.approx(count / total, rel=1e-12)
  assert shown["rates"]["glue_rte"]["fraction"] == pytest.approx(0.0026218, abs=1e-7)
  assert shown["rates"]["glue_mnli_matched"] == {"rate": 0.0, "fraction": 0.0,
                                                 "rule": "explicit 0"}
  assert shown["rates"]["glue_rte"]["rule"] == "examples-proportional e"
  # Examples come from the first tasks only: CoLA (local, real text), not MNLI (TFDS).
  assert len(shown["examples"]) == 1
  assert shown["examples"][0]["task"] == "glue_cola"
  assert shown["examples"][0]["inputs"].startswith("cola sentence: ")


def test_rates_need_counts_never_a_silent_fallback(shared_data, capsys):
  """A rate without a count is shown as unknown (with why), and then no fraction is."""
  shown = _show_json(capsys, "glue", "-n", "0", f"--gin.DATA_DIR='{shared_data}'")
  mnli = shown["rates"]["glue_mnli"]
  assert mnli["rate"] is None and "TASK_DATA_DIRS" in mnli["unknown"]
  assert shown["rates"]["glue_rte"]["rate"] == GLUE_TRAIN["glue_rte"]
  assert {r["fraction"] for r in shown["rates"].values()} == {None}
  # SuperGLUE's BoolQ has no local train split: its rate cannot be counted.
  shown = _show_json(capsys, "super_glue", "-n", "0", f"--gin.DATA_DIR='{shared_data}'")
  assert "no split 'train'" in shown["rates"]["super_glue_boolq"]["unknown"]
  code = cli.main(["tasks", "show", "super_glue", "-n", "0", f"--gin.DATA_DIR='{shared_data}'"])
  assert code == 0 and "unknown until counted" in capsys.readouterr().out


def test_named_mixtures_members_and_variants():
  glue = seqio.get_mixture_or_task("glue")
  trained = {t.name for t in glue.tasks} - set(benchmarks.MNLI_EVAL_SPLITS)
  assert trained == set(benchmarks.GLUE) and "glue_ax" not in trained
  assert {t.name for t in seqio.get_mixture_or_task("super_glue").tasks} == \
      set(benchmarks.SUPER_GLUE)
  assert len(seqio.get_mixture_or_task("glue_super_glue").tasks) == 9 + 8 + 2
  for name in ("glue", "super_glue", "glue_super_glue", "dspt14", "recycling36"):
    for suffix in ("", "_equal", "_temperature"):
      assert name + suffix in seqio.MixtureRegistry.names()
  equal = rates.normalized_rates(seqio.get_mixture_or_task("super_glue_equal"))
  assert all(v == pytest.approx(1 / 8) for v in equal.values())
  # Temperature T=2 with K=2^19 on the recorded sizes (no DATA_DIR: TFDS metadata).
  hot = rates.normalized_rates(seqio.get_mixture_or_task("glue_temperature"))
  raw = {t: min(n, 2**19) ** 0.5 for t, n in GLUE_TRAIN.items()}
  assert hot["glue_rte"] == pytest.approx(raw["glue_rte"] / sum(raw.values()), rel=1e-12)


def test_mixture_of_mixtures_splits_samples_between_benchmarks():
  both = rates.normalized_rates(seqio.get_mixture_or_task("glue_and_super_glue"))
  assert sum(v for t, v in both.items() if t.startswith("glue_")) == pytest.approx(0.5)
  glue = rates.normalized_rates(seqio.get_mixture_or_task("glue"))
  assert both["glue_rte"] == pytest.approx(glue["glue_rte"] / 2, rel=1e-12)


def test_study_mixtures_cap_k():
  assert studies.MAXIMUM == 2**16
  for name, members in (("dspt14", dspt.DSPT14), ("recycling36", recycling.RECYCLING36)):
    mixture = seqio.get_mixture_or_task(name)
    assert sorted(t.name for t in mixture.tasks) == sorted(members)
  recycling36 = seqio.get_mixture_or_task("recycling36")
  get = lambda n: recycling36.get_rate(seqio.get_mixture_or_task(n))  # noqa: E731
  assert get("super_glue_cb") == 250 and get("glue_rte") == 2490
  assert get("glue_mnli") == 65536 and get("amazon_reviews_multi_en") == 65536
  dspt14 = seqio.get_mixture_or_task("dspt14")
  assert dspt14.get_rate(seqio.get_mixture_or_task("hellaswag")) == 39905
  assert dspt14.get_rate(seqio.get_mixture_or_task("amazon_polarity")) == 65536


def test_mnli_eval_tasks_read_the_matched_and_mismatched_splits(tmp_path, monkeypatch):
  matched = seqio.get_mixture_or_task("glue_mnli_matched")
  assert matched.splits == ("validation",)
  assert matched.num_input_examples("validation") == 9815
  assert seqio.get_mixture_or_task("glue_mnli_mismatched").num_input_examples(
      "validation") == 9832
  folder = tmp_path / "glue" / "mnli"
  folder.mkdir(parents=True)
  for split, word in (("validation_matched", "cats"), ("validation_mismatched", "dogs")):
    (folder / f"{split}.jsonl").write_text(json.dumps(
        {"premise": f"I like {word}.", "hypothesis": "I like pets.", "label": 0,
         "idx": 0}) + "\n")
  monkeypatch.setenv("RECAST_DATA_DIR", str(tmp_path))
  for task, word in (("glue_mnli_matched", "cats"), ("glue_mnli_mismatched", "dogs")):
    task = seqio.get_mixture_or_task(task)
    [example] = list(task.get_dataset(None, split="validation", shuffle=False)
                     .as_numpy_iterator())
    assert example["inputs_pretokenized"].decode() == \
        f"mnli hypothesis: I like pets. premise: I like {word}."
    assert example["targets_pretokenized"].decode() == "entailment"
    assert task.metric_fns == seqio.get_mixture_or_task("glue_mnli").metric_fns


def test_leave_one_out_and_multitask_pretraining_mixtures():
  name = mixtures.leave_one_out(mixture="glue_super_glue", task="super_glue_cb")
  assert name == "glue_super_glue_without_super_glue_cb"
  loo = seqio.get_mixture_or_task(name)
  assert {t.name for t in loo.tasks} == \
      {t.name for t in seqio.get_mixture_or_task("glue_super_glue").tasks} - {"super_glue_cb"}
  with pytest.raises(rates.MixingRateError, match="not in mixture"):
    mixtures.leave_one_out(mixture="glue", task="super_glue_cb")
  with pytest.raises(rates.MixingRateError, match="sub-mixtures"):
    mixtures.leave_one_out(mixture="glue_and_super_glue", task="glue_rte")
  name = mixtures.multitask_pretraining(mixture="glue", corpus_task="wikipedia_en_span_corruption")
  mixed = rates.normalized_rates(seqio.get_mixture_or_task(name))
  counts = {t: min(n, 2**19) for t, n in GLUE_TRAIN.items()}
  total = sum(counts.values()) + 2**19
  assert mixed["wikipedia_en_span_corruption"] == pytest.approx(2**19 / total, rel=1e-12)
  assert mixed["glue_qqp"] == pytest.approx(363846 / total, rel=1e-12)
  assert mixed["glue_mnli_matched"] == 0.0


def test_tasks_list_shows_the_mixtures(capsys):
  assert cli.main(["tasks", "list", "--json"]) == 0
  listing = json.loads(capsys.readouterr().out)
  mixture_tasks = {m["name"]: m["tasks"] for m in listing["mixtures"]}
  assert mixture_tasks["glue"] == sorted(set(benchmarks.GLUE) | set(benchmarks.MNLI_EVAL_SPLITS))
  assert len(mixture_tasks["recycling36"]) == 36 and len(mixture_tasks["dspt14"]) == 14
  matched = next(t for t in listing["tasks"] if t["name"] == "glue_mnli_matched")
  assert matched["splits"] == ["validation"]
  assert "validation=validation_matched" in matched["source"]


def test_evaluator_mixture_aggregate_adds_the_glue_score():
  import types
  from recast.trainer import evaluation
  inference = {
      "glue_cola": {"matthews_corrcoef": 40.0}, "glue_sst2": {"accuracy": 90.0},
      "glue_mrpc": {"f1": 88.0, "accuracy": 84.0},
      "glue_stsb": {"pearson_corrcoef": 86.0, "spearman_corrcoef": 85.0},
      "glue_qqp": {"f1": 70.0, "accuracy": 88.0},
      "glue_mnli_matched": {"accuracy": 80.0}, "glue_mnli_mismatched": {"accuracy": 82.0},
      "glue_qnli": {"accuracy": 91.0}, "glue_rte": {"accuracy": 70.0},
      "glue_wnli": {"accuracy": 10.0}}
  results = {t: dict(v, loss=1.0, token_accuracy=0.5) for t, v in inference.items()}
  fake = types.SimpleNamespace(tasks=[types.SimpleNamespace(name=t) for t in inference])
  averages = evaluation.Evaluator._averages(fake, results, inference)
  assert averages["glue_score"] == pytest.approx(622.5 / 8)
  assert averages["average"] == pytest.approx((40 + 90 + 86 + 85.5 + 79 + 80 + 82 + 91 + 70
                                               + 10) / 10)
  assert "super_glue_score" not in averages
