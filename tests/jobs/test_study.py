"""`recast study`: stages of sweeps in order, references between them, and the report.

Fast: spec errors naming their line (nothing written), the --dry_run graph, the report's
numbers on synthetic metrics. Slow (module fixture `study_run`): a real study of 2 stages x
2 tiny runs on Ray (the second stage fine-tunes the first's runs, seed for seed), run
twice: the second time starts no run. The report is recomputed from metrics.jsonl.
"""

import csv
import io
import json
import math
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recast import cli, metrics_writer
from recast.jobs import study, study_report, sweep

REPO = Path(__file__).resolve().parents[2]
TOY_VOCAB = (REPO / ".venv/lib/python3.11/site-packages/seqio/test_data/sentencepiece/"
             "sentencepiece.model")
TASK = "study_toy"
# t(0.975, df) for df = 1, 2: the 95% interval's factor (tables; scipy gives the same).
T975 = {1: 12.706204736174698, 2: 4.302652729749464}


@pytest.fixture(scope="session")
def toy_task_file(tmp_path_factory) -> Path:
  """A two-label task over 24 train and 8 validation rows written here."""
  folder = tmp_path_factory.mktemp("study_task")
  words = ["good", "bad", "fine", "awful"]
  rows = [{"text": f"the film was {words[i % 4]} number {i}",
           "label": "positive" if i % 4 in (0, 2) else "negative"} for i in range(32)]
  (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
  (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
  path = folder / "recast.tasks.yaml"
  path.write_text(textwrap.dedent(f"""\
      tasks:
        - name: {TASK}
          files: {{train: train.jsonl, validation: validation.jsonl}}
          inputs: "review: {{text}}"
          targets: "{{label}}"
          labels: [positive, negative]
  """))
  return path


def _spec_text(tmp_path: Path, task_file: Path, *, second: str = "", arms: str = "",
               extra: str = "") -> str:
  """A study YAML: stage first (SEED 0, 1), stage second (from first, seed for seed)."""
  return textwrap.dedent(f"""\
      name: toy
      storage_path: {tmp_path / 'studies'}
      vocabulary: {TOY_VOCAB}
      tasks_files: [{task_file}]
      bindings:
        MIXTURE_OR_TASK_NAME: {TASK}
        TASK_FEATURE_LENGTHS: {{inputs: 32, targets: 8}}
        TRAIN_STEPS: 4
        BATCH_SIZE: 4
        EVAL_PERIOD: 2
        train.max_truncated_fraction: 1.0
      max_concurrent_trials: 2
      max_failures: 0
      env: {{XLA_FLAGS: --xla_force_host_platform_device_count=1}}
      stages:
        first:
          gin_files: [models/t5_1_1/tiny.gin, runs/finetune.gin]
          grid: {{SEED: [0, 1]}}
        second:
          gin_files: [models/t5_1_1/tiny.gin, runs/finetune.gin]
          grid: {{SEED: [0, 1]}}
          bindings:
            INITIAL_CHECKPOINT_PATH: {second or '{stage: first, SEED: same}'}
      """) + textwrap.dedent(arms or """\
      arms:
        scratch: {stage: first}
        continued: {stage: second}
      reference: scratch
      """) + extra


def _write(tmp_path: Path, text: str) -> Path:
  path = tmp_path / "study.yaml"
  path.write_text(text)
  return path


def _line_of(text: str, fragment: str) -> int:
  return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


# ------------------------------------------------------------------------------------------
# The spec


@pytest.mark.parametrize("change, fragment, message", [
    ({"second": "{stage: nowhere}"}, "INITIAL_CHECKPOINT_PATH",
     r"names stage 'nowhere', which is not a stage of the study; stages: first, second"),
    ({"second": "{stage: first, LEARNING_RATE: same}"}, "INITIAL_CHECKPOINT_PATH",
     r"selects LEARNING_RATE, which is not an axis of stage first; its axes: SEED"),
    ({"second": "{stage: first}"}, "INITIAL_CHECKPOINT_PATH",
     r"2 runs of stage first have no axes; add one of SEED"),
    ({"second": "{stage: first, SEED: 7}"}, "INITIAL_CHECKPOINT_PATH",
     r"no run of stage first has SEED=7"),
    ({"arms": "arms:\n  scratch: {stage: third}\nreference: scratch\n"}, "scratch: {stage",
     r"arm scratch names stage 'third', which is not a stage"),
    ({"arms": "arms:\n  scratch: {stage: first, SEED: 5}\nreference: scratch\n"},
     "scratch: {stage", r"arm scratch selects no run of stage first \(SEED=5\)"),
    ({"arms": "arms:\n  scratch: {stage: first, LR: 1}\nreference: scratch\n"},
     "scratch: {stage", r"arm scratch selects LR, which is not an axis"),
    ({"arms": "arms:\n  scratch: {stage: first}\n"}, "arms:",
     r"arms need a reference: the arm the others are compared with \(one of scratch\)"),
    ({"arms": "arms:\n  scratch: {stage: first}\nreference: best\n"}, "reference:",
     r"reference arm 'best' is not among the arms \(scratch\)"),
    ({"extra": "metrics: [accuracy]\n"}, "metrics:",
     r"unknown key 'metrics' in the study \(did you mean 'metric'\?\); allowed: name, "
     r"storage_path"),
])
def test_bad_spec_is_rejected_naming_its_line(tmp_path, toy_task_file, change, fragment,
                                              message):
  text = _spec_text(tmp_path, toy_task_file, **change)
  path = _write(tmp_path, text)
  line = _line_of(text, fragment)
  prefix = r"(INITIAL_CHECKPOINT_PATH:? )?"
  with pytest.raises(study.StudySpecError, match=rf"study.yaml, line {line}: {prefix}{message}"):
    study.load_study(path)
  assert not (tmp_path / "studies").exists()


def test_cycles_unknown_stage_keys_commands_and_second_vocabularies_name_their_line(
    tmp_path, toy_task_file):
  text = _spec_text(tmp_path, toy_task_file).replace(
      "    grid: {SEED: [0, 1]}\n  second:",
      "    grid: {SEED: [0, 1]}\n    bindings: {INITIAL_CHECKPOINT_PATH: {stage: second, "
      "SEED: same}}\n  second:", 1)
  closing = _line_of(text, "{stage: first, SEED: same}")  # the reference closing the cycle
  with pytest.raises(study.StudySpecError, match=rf"line {closing}: "
                     r"stages form a cycle: first -> second -> first"):
    study.load_study(_write(tmp_path, text))
  text = _spec_text(tmp_path, toy_task_file).replace("grid: {SEED: [0, 1]}\n  second:",
                                                     "grids: {SEED: [0, 1]}\n  second:")
  with pytest.raises(study.StudySpecError, match=rf"line {_line_of(text, 'grids:')}: unknown "
                     r"key 'grids' in stage first \(did you mean 'grid'\?\); allowed: gin_files"):
    study.load_study(_write(tmp_path, text))
  text = _spec_text(tmp_path, toy_task_file).replace("  second:\n",
                                                     "  second:\n    command: fusee\n")
  with pytest.raises(study.StudySpecError, match=rf"line {_line_of(text, 'command: fusee')}: "
                     r"stage second: command 'fusee' is not one a stage runs; did you mean "
                     r"'fuse'\? use one of train, fuse"):
    study.load_study(_write(tmp_path, text))
  text = _spec_text(tmp_path, toy_task_file).replace(
      "    INITIAL_CHECKPOINT_PATH:", "    VOCABULARY: byte\n      INITIAL_CHECKPOINT_PATH:")
  with pytest.raises(study.StudySpecError, match=rf"line {_line_of(text, 'VOCABULARY: byte')}: "
                     rf"VOCABULARY byte differs from the study's vocabulary {TOY_VOCAB} "
                     r"\(line 3\); every stage shares one vocabulary"):
    study.load_study(_write(tmp_path, text))
  # The same vocabulary bound again is not a second one.
  same = _spec_text(tmp_path, toy_task_file).replace(
      "    INITIAL_CHECKPOINT_PATH:", f"    VOCABULARY: {TOY_VOCAB}\n      "
      "INITIAL_CHECKPOINT_PATH:")
  assert study.load_study(_write(tmp_path, same)).vocabulary == str(TOY_VOCAB)
  assert not (tmp_path / "studies").exists()


def test_a_bad_binding_in_a_later_stage_stops_the_study_before_any_run(tmp_path,
                                                                       toy_task_file):
  text = _spec_text(tmp_path, toy_task_file).replace("grid: {SEED: [0, 1]}\n    bindings:",
                                                     "grid: {LEARNING_RTE: [0.1]}\n    "
                                                     "bindings:")
  text = text.replace("{stage: first, SEED: same}", "{stage: first, SEED: 0}")
  with pytest.raises(sweep.errors.UserError, match=r"stage second: trial 000_LEARNING_RTE=0.1:.*"
                     r"LEARNING_RTE"):
    study.run_study(_write(tmp_path, text))
  assert not (tmp_path / "studies").exists()


def test_lengths_that_cut_too_much_in_a_later_stage_stop_the_study_before_any_run(
    tmp_path, toy_task_file, capsys):
  """Every training run's truncation check (the one `recast train` makes at its start) runs
  before the first run: a later stage's cut is refused naming its stage and run, not after
  the earlier stages have trained; a cut under the run's limit is a warning."""
  text = _spec_text(tmp_path, toy_task_file)
  cut = text.replace("      INITIAL_CHECKPOINT_PATH:", "      TASK_FEATURE_LENGTHS: {inputs: 4, "
                     "targets: 8}\n      train.max_truncated_fraction: 0.1\n"
                     "      INITIAL_CHECKPOINT_PATH:")
  with pytest.raises(sweep.errors.UserError) as raised:
    study.run_study(_write(tmp_path, cut))
  capsys.readouterr()  # (stage first's warning, below)
  message = str(raised.value)
  assert "stage second: trial 000_SEED=0: study_toy: examples will be truncated" in message
  assert "inputs: 100.0% longer than 4" in message and "max_truncated_fraction" in message
  assert not (tmp_path / "studies").exists()
  warned = text.replace("TASK_FEATURE_LENGTHS: {inputs: 32, targets: 8}",
                        "TASK_FEATURE_LENGTHS: {inputs: 4, targets: 8}")
  study.validate_study(study.load_study(_write(tmp_path, warned)))
  err = capsys.readouterr().err
  assert err.count("warning: stage first, trial 000_SEED=0: study_toy: examples will be "
                   "truncated") == 1
  assert err.count("warning: stage second, trial 000_SEED=0: study_toy") == 1
  assert not (tmp_path / "studies").exists()


def test_a_fusion_whose_contributors_would_cut_too_much_stops_the_study_before_any_run(
    tmp_path, toy_task_file, capsys):
  """A fuse stage's contributors (a `recast train` per pool task, at the fusion's lengths)
  are checked with the rest: the study stops before its first run, naming the contributor."""
  fusion = FUSION_STAGES.replace("NUM_EVAL_EXAMPLES: 8}", "NUM_EVAL_EXAMPLES: 8,\n"
                                 "               TASK_FEATURE_LENGTHS: {inputs: 4, targets: 8},"
                                 "\n               train.max_truncated_fraction: 0.1}")
  text = _spec_text(tmp_path, toy_task_file).replace("arms:\n", fusion + "arms:\n", 1)
  with pytest.raises(sweep.errors.UserError) as raised:
    study.run_study(_write(tmp_path, text))
  message = str(raised.value)
  assert ("stage fusion: trial 000_FUSION_SEED=0: contributor of study_toy: examples will be "
          "truncated") in message
  assert "inputs: 100.0% longer than 4" in message
  assert not (tmp_path / "studies").exists()
  # Under the run's limit (the study's 1.0) the same cut is one warning naming the stage.
  study.validate_study(study.load_study(_write(tmp_path, _spec_text(
      tmp_path, toy_task_file).replace("arms:\n", FUSION_STAGES + "arms:\n", 1))))
  assert capsys.readouterr().err.count(
      "warning: stage fusion, trial 000_FUSION_SEED=0: contributor of study_toy: examples "
      "will be truncated") == 1


def test_dry_run_prints_the_graph_of_runs_and_starts_nothing(tmp_path, toy_task_file,
                                                              capsys):
  path = _write(tmp_path, _spec_text(tmp_path, toy_task_file))
  assert cli.main(["study", str(path), "--dry_run"]) == 0
  out = capsys.readouterr().out
  runs = tmp_path / "studies/toy"
  assert "stage first (2 runs):" in out and "stage second (2 runs):" in out
  assert out.index("stage first") < out.index("stage second")
  second = [line for line in out.splitlines() if line.startswith("  000_SEED=0: ")][1]
  assert f"INITIAL_CHECKPOINT_PATH='{runs}/first/runs/000_SEED=0'" in second
  assert f"VOCABULARY='{TOY_VOCAB}'" in second
  assert second.endswith("<- first/000_SEED=0")
  assert "arm scratch (reference): first: 000_SEED=0, 001_SEED=1" in out
  assert "level 0: 2 runs (first 2)\nlevel 1: 2 runs (second 2)\n" in out
  assert "4 runs in 2 stages; gin checked, lengths checked; nothing started" in out
  assert not runs.exists()
  # Stages run in the order their references need, whatever order they are written in.
  text = path.read_text()
  first, second_stage = text.index("  first:"), text.index("  second:")
  arms = text.index("arms:")
  swapped = text[:first] + text[second_stage:arms] + text[first:second_stage] + text[arms:]
  assert list(study.load_study(_write(tmp_path, swapped)).stages) == ["first", "second"]


def test_gin_flags_on_the_command_line_reach_every_run_after_the_spec(tmp_path, toy_task_file,
                                                                      capsys):
  """`recast study SPEC --gin.NAME=VALUE` as `recast sweep`'s: bound in every run of every
  stage, after the spec's own; a grid axis, a reference to another stage or VOCABULARY is
  refused in one line before anything is written."""
  path = _write(tmp_path, _spec_text(tmp_path, toy_task_file))
  assert cli.main(["study", str(path), "--dry_run", "--gin.TRAIN_STEPS=6",
                   "--gin.DATA_DIR='/data/here'"]) == 0
  runs = [line for line in capsys.readouterr().out.splitlines()
          if line.startswith("  00")]
  assert len(runs) == 4
  for line in runs:  # the spec's TRAIN_STEPS=4, then the command line's 6 (gin: last wins)
    assert line.index("TRAIN_STEPS=4") < line.index("TRAIN_STEPS=6")
    assert "DATA_DIR='/data/here'" in line
  for flag, message in [
      ("--gin.SEED=3", r"--gin.SEED sets a grid axis of stage first; change the spec"),
      ("--gin.INITIAL_CHECKPOINT_PATH='/x'", r"line \d+: --gin.INITIAL_CHECKPOINT_PATH would "
       r"replace stage second's reference to another stage's runs; change the spec"),
      ("--gin.VOCABULARY='byte'", r"--gin.VOCABULARY would give the runs of .*study.yaml "
       r"another vocabulary than the study's one; set `vocabulary:` in the spec")]:
    assert cli.main(["study", str(path), flag]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "studies").exists()
  # Started once with the spec alone, the study is not run again with other bindings: its
  # runs would not be the ones it started. Refused before anything is written.
  started = study.load_study(path)
  for stage in started.stages.values():
    with sweep.hold_experiment(stage.spec, [r.trial for r in stage.runs], resume=True):
      pass
  assert cli.main(["study", str(path), "--gin.TRAIN_STEPS=6"]) == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]  # after the truncation warnings of the toy lengths
  assert re.fullmatch(r"recast study: error: stage first of .*studies/toy started with other "
                      r"runs than .*study.yaml now gives \(000_SEED=0 -> 000_SEED=0\): the "
                      r"spec's or the command line's gin files or bindings changed; .*",
                      last), err
  assert not (started.study_dir / study.STUDY_FILE).exists()


@pytest.mark.parametrize("name, runs, arms, task", [
    ("self_pretraining_smoke", 11, {"random", "self", "self_0316", "general"}, "glue_sst2"),
    ("self_pretraining", 41, {"random", "self", "general"}, "glue_rte")])
def test_built_in_studies_are_valid(name, runs, arms, task, shared_data):
  spec = study.load_study(REPO / "gin/experiments/studies" / f"{name}.yaml", cwd=str(REPO))
  study.validate_study(spec)
  assert len(spec.all_runs()) == runs
  assert list(spec.stages) == ["pretrain_self", "pretrain_general", "finetune"]
  assert spec.reference == "random" and set(spec.arms) == arms
  self_run = next(r for r in spec.stages["finetune"].runs if r.trial.point["INIT"] == "self")
  assert self_run.depends_on[0].startswith("pretrain_self/000_")
  assert f"TASK={task}" in self_run.depends_on[0]


def test_compact_models_smoke_study_hands_each_stage_to_the_next(shared_data):
  spec = study.load_study(REPO / "gin/experiments/studies/compact_models_smoke.yaml",
                          cwd=str(REPO))
  study.validate_study(spec)
  assert list(spec.stages) == ["teacher", "pretrain", "distill", "finetune"]
  assert len(spec.all_runs()) == 1 + 1 + 4 + 6
  assert spec.reference == "scratch" and set(spec.arms) == {
      "scratch", "pretrained", "distilled", "pretrained_distilled"}
  teacher = spec.stages["teacher"].runs[0].trial
  for run in spec.stages["distill"].runs:  # every distillation from the task's teacher
    assert f"TEACHER_CHECKPOINT_PATH={str(teacher.model_dir)!r}" in run.trial.bindings
  distilled = {r.trial.point["SEED"]: f"distill/{r.trial.name}"
               for r in spec.stages["distill"].runs if r.trial.point["INIT"] == "pretrained"}
  pd = [r for r in spec.stages["finetune"].runs
        if r.trial.point["INIT"] == "pretrained_distilled"]
  assert len(pd) == 2 and all(r.depends_on == (distilled[r.trial.point["SEED"]],) for r in pd)


def test_multitask_smoke_study_compares_single_tasks_with_mixtures(shared_data):
  spec = study.load_study(REPO / "gin/experiments/studies/multitask_smoke.yaml",
                          cwd=str(REPO))
  study.validate_study(spec)  # registers the spec's task file: its three mixtures
  assert len(spec.all_runs()) == 6 + 6 + 6
  assert set(spec.arms) == {"single", "proportional", "temperature", "equal",
                            "multitask_finetune"} and spec.reference == "single"
  from recast.mixtures import lookup
  rates = {m: lookup.get_mixture_or_task(m).get_rate(lookup.get_mixture_or_task("glue_sst2"))
           for m in ("glue3_proportional", "glue3_temperature", "glue3_equal")}
  assert rates["glue3_proportional"] == 67349 and rates["glue3_equal"] == 1
  assert rates["glue3_temperature"] == pytest.approx(67349 ** 0.5)
  proportional = {r.trial.point["SEED"]: f"mixture/{r.trial.name}"
                  for r in spec.stages["mixture"].runs
                  if r.trial.point["MIXTURE"] == "glue3_proportional"}
  runs = spec.stages["multitask_finetune"].runs
  assert len(runs) == 6 and all(
      r.depends_on == (proportional[r.trial.point["SEED"]],) for r in runs)


def test_cold_fusion_smoke_study_fuses_then_recycles_as_soon_as_it_can(shared_data):
  spec = study.load_study(REPO / "gin/experiments/studies/cold_fusion_smoke.yaml",
                          cwd=str(REPO))
  study.validate_study(spec)  # the fuse stage's gin as `recast fuse` reads it
  assert list(spec.stages) == ["pretrain", "fusion", "recycle"]
  assert [s.command for s in spec.stages.values()] == ["train", "fuse", "train"]
  [pretrain], [fuse] = spec.stages["pretrain"].runs, spec.stages["fusion"].runs
  assert fuse.trial.command == "fuse" and fuse.depends_on == (f"pretrain/{pretrain.trial.name}",)
  assert f"FUSION_DIR={fuse.trial.model_dir!r}" in fuse.trial.bindings
  assert not any(b.startswith("MODEL_DIR=") for b in fuse.trial.bindings)
  assert f"BASE_CHECKPOINT={pretrain.trial.model_dir!r}" in fuse.trial.bindings
  assert fuse.trial.train_command(spec.stages["fusion"].spec)[1:4] == ["-m", "recast", "fuse"]
  recycled = {r.trial.point["BASE"]: r for r in spec.stages["recycle"].runs}
  assert (f"INITIAL_CHECKPOINT_PATH={fuse.trial.model_dir!r}"
          in recycled["fused"].trial.bindings)  # resolved to its last round when it starts
  lengths = {(r.trial.point["BASE"], r.trial.point["TASK"], r.trial.point["SEED"],
              r.trial.point["FEATURE_LENGTHS"]["inputs"]) for r in spec.stages["recycle"].runs}
  assert lengths == {(base, task, seed, inputs) for base in ("pretrained", "fused")
                     for task, inputs in (("super_glue_wic", 128), ("glue_rte", 272))
                     for seed in (0, 1)}  # each task at its own lengths, both bases alike
  # Each run starts as soon as what it names is done: the base's recycling runs beside
  # the fusion, the fused model's after it.
  levels = [[f"{r.stage}:{r.trial.point.get('BASE', '')}" for r in w]
            for w in study.levels(spec)]
  assert levels == [["pretrain:"], ["fusion:"] + ["recycle:pretrained"] * 4,
                   ["recycle:fused"] * 4]
  # Free slots go to the runs others wait on first: the pretraining, then the fusion.
  order = [f"{r.stage}:{r.trial.point.get('BASE', '')}"
           for r in study.start_order(spec, spec.all_runs())]
  assert order == (["pretrain:", "fusion:"] + ["recycle:pretrained"] * 4 +
                   ["recycle:fused"] * 4)
  assert set(spec.arms) == {"pretrained", "fused", "fusion_rounds"}
  assert spec.reference == "pretrained"


@pytest.mark.parametrize("how", ["error", "rejected"])
def test_a_run_starts_once_the_runs_it_names_are_done_and_never_after_a_failed_one(how):
  """The study's scheduler (one Tune searcher): a free slot goes to the first run whose
  references are finished; a run needing a failed or rejected run (completed without
  error, but not finished) is never started, nor what needs it."""
  from ray.tune.search import Searcher
  finished = set()
  searcher = sweep.ready_first_searcher(
      ["a", "b", "c", "d", "e"], {"c": ["a"], "d": ["c"], "e": ["b"]}, finished.__contains__)
  assert [searcher.suggest(i) for i in ("1", "2", "3")] == [{"trial": "a"}, {"trial": "b"},
                                                            None]
  finished.add("b")
  searcher.on_trial_complete("2")
  assert searcher.suggest("3") == {"trial": "e"}  # before c: its reference b is done
  assert searcher.suggest("4") is None            # c waits on a
  finished.add("a")
  searcher.on_trial_complete("1")
  assert searcher.suggest("4") == {"trial": "c"}
  assert searcher.suggest("5") is None            # d waits on c
  searcher.on_trial_complete("4", error=how == "error")  # c failed, or was rejected
  assert searcher.suggest("5") == Searcher.FINISHED      # d is never started


# ------------------------------------------------------------------------------------------
# The report, on synthetic runs


def _study_folder(folder: Path, name: str, reference: str,
                  members: list[tuple[str, int, str, list]]) -> Path:
  """A study folder of one stage `s`: members [(arm, seed, run name, metrics rows)]."""
  runs, arms = [], {}
  for arm, seed, run, rows in members:
    model_dir = folder / "s/runs" / run
    model_dir.mkdir(parents=True)
    (model_dir / metrics_writer.METRICS_FILE).write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    runs.append({"name": run, "point": {"ARM": arm, "SEED": seed},
                 "model_dir": f"s/runs/{run}", "depends_on": []})
    arms.setdefault(arm, {"stage": "s", "select": {"ARM": arm}, "runs": []})["runs"].append(run)
  (folder / study_report.STUDY_FILE).write_text(json.dumps({
      "name": name, "reference": reference, "metric": None, "arms": arms,
      "stages": {"s": {"seed_axis": "SEED", "runs": runs}}}))
  return folder


def _fake_study(tmp_path: Path, values: dict, baseline: float = 0.5) -> Path:
  """A study folder: arms {arm: {seed: [(step, accuracy, rank_accuracy)]}} on task t."""
  members = []
  for arm, by_seed in values.items():
    for seed, curve in by_seed.items():
      rows = [{"step": 0, "split": metrics_writer.BASELINE_SPLIT, "task": "t",
               "metric": m, "value": baseline} for m in ("accuracy", "rank_accuracy")]
      for step, acc, rank in curve:
        rows += [{"step": step, "split": "validation", "task": "t", "metric": m, "value": v}
                 for m, v in (("loss", 1.0), ("accuracy", acc), ("f1", 0.1),
                              ("rank_accuracy", rank))]
      members.append((arm, seed, f"{arm}_{seed}", rows))
  return _study_folder(tmp_path / "fake", "fake", "ref", members)


def test_report_gives_intervals_paired_differences_and_the_baseline(tmp_path, capsys):
  folder = _fake_study(tmp_path, {
      "ref": {0: [(2, 0.3, 0.5), (4, 0.5, 0.6)], 1: [(2, 0.4, 0.5), (4, 0.6, 0.7)],
              2: [(4, 0.7, 0.6)]},
      "new": {0: [(2, 0.5, 0.5), (4, 0.7, 0.6)], 1: [(4, 0.5, 0.8)],
              2: [(4, 0.8, 0.9)]}})
  assert cli.main(["report", str(folder)]) == 0
  assert "Study fake" in capsys.readouterr().out
  with open(folder / "report/summary.csv") as f:
    rows = {(r["arm"], r["metric"]): r for r in csv.DictReader(f)}
  ref, new = np.array([0.5, 0.6, 0.7]), np.array([0.7, 0.5, 0.8])
  half = T975[2] * np.std(ref, ddof=1) / math.sqrt(3)
  row = rows[("ref", "accuracy")]
  np.testing.assert_allclose([float(row[k]) for k in ("mean", "std", "ci95_low", "ci95_high")],
                             [0.6, np.std(ref, ddof=1), 0.6 - half, 0.6 + half])
  assert row["seeds"] == "3" and row["diff_mean"] == "" and float(row["baseline"]) == 0.5
  diffs = new - ref  # +0.2, -0.1, +0.1: 2 of 3 agree with the mean's sign
  half = T975[2] * np.std(diffs, ddof=1) / math.sqrt(3)
  row = rows[("new", "accuracy")]
  np.testing.assert_allclose([float(row[k]) for k in ("diff_mean", "diff_ci95_low",
                                                      "diff_ci95_high")],
                             [diffs.mean(), diffs.mean() - half, diffs.mean() + half])
  assert (row["diff_agree"], row["diff_pairs"]) == ("2", "3")
  rank = rows[("new", "rank_accuracy")]  # the rank twin, paired alike; a zero disagrees
  assert float(rank["diff_mean"]) == pytest.approx(np.mean([0.0, 0.1, 0.3]))
  assert (rank["diff_agree"], rank["diff_pairs"]) == ("2", "3")
  markdown = (folder / "report/report.md").read_text()
  assert "| ref | 0.6 ± 0.1 [0.3516, 0.8484] (n=3) |" in markdown
  assert "; 2 of 3 seeds agree in sign |" in markdown
  assert "| majority class | 0.5 |" in markdown
  assert (folder / "report/curves_t.png").stat().st_size > 1000
  summary = study_report.summarize(folder)  # curves: mean over the seeds at each step
  assert summary["curves"]["t"]["accuracy"]["ref"] == {2: pytest.approx(0.35),
                                                        4: pytest.approx(0.6)}


def test_several_tasks_get_an_average_row_per_seed_as_a_benchmark_score(tmp_path):
  """A mixture arm (one run per seed evaluating both tasks) against a single-task arm (one
  run per task and seed): the average row is, per seed, the mean over the tasks."""
  values = {("single", "a", 0): 0.6, ("single", "b", 0): 0.2, ("single", "a", 1): 0.8,
            ("single", "b", 1): 0.4, ("mix", "a", 0): 0.7, ("mix", "b", 0): 0.5,
            ("mix", "a", 1): 0.9, ("mix", "b", 1): 0.1}
  members = []
  for arm, seed, tasks in [("single", 0, "a"), ("single", 0, "b"), ("single", 1, "a"),
                           ("single", 1, "b"), ("mix", 0, "ab"), ("mix", 1, "ab")]:
    rows = [{"step": 10, "split": "validation", "task": t, "metric": "accuracy",
             "value": values[(arm, t, seed)]} for t in tasks]
    rows += [{"step": 0, "split": metrics_writer.BASELINE_SPLIT, "task": t,
              "metric": "accuracy", "value": {"a": 0.5, "b": 0.7}[t]} for t in tasks]
    members.append((arm, seed, f"{arm}_{tasks}_{seed}", rows))
  folder = _study_folder(tmp_path / "multi", "multi", "single", members)
  study_file = folder / study_report.STUDY_FILE  # written with sorted keys, as studies are
  study_file.write_text(json.dumps({**json.loads(study_file.read_text()),
                                    "arm_order": ["single", "mix"]}, sort_keys=True))
  summary = study_report.summarize(folder)
  assert summary["arms"] == ["single", "mix"]  # the spec's order, not the file's
  assert summary["tasks"] == ["a", "b", study_report.AVERAGE]
  rows = {(r["arm"], r["task"]): r for r in summary["rows"]}
  single = rows[("single", study_report.AVERAGE)]
  assert single["mean"] == pytest.approx(np.mean([(0.6 + 0.2) / 2, (0.8 + 0.4) / 2]))
  assert single["seeds"] == 2 and single["baseline"] == pytest.approx(0.6)
  mix = rows[("mix", study_report.AVERAGE)]  # seed 0: 0.6 vs 0.4; seed 1: 0.5 vs 0.6
  assert mix["mean"] == pytest.approx(0.55)
  assert mix["diff_mean"] == pytest.approx(np.mean([0.2, -0.1]))
  assert (mix["diff_agree"], mix["diff_pairs"]) == (1, 2)
  assert rows[("mix", "b")]["mean"] == pytest.approx(0.3)
  assert "average over tasks" in study_report.markdown(summary)


def test_the_average_row_covers_the_reference_arms_tasks(tmp_path):
  """A ColD Fusion study: the recycling arms on unseen tasks a and b, the fusion's rounds
  on seen task s (with the fusion's own `average` row): the average is over a and b."""
  members = []
  for arm, seed, values in [("base", 0, {"a": 0.5, "b": 0.3}), ("base", 1, {"a": 0.7, "b": 0.1}),
                            ("fused", 0, {"a": 0.6, "b": 0.6}), ("fused", 1, {"a": 0.8, "b": 0.2})]:
    rows = [{"step": 10, "split": "validation", "task": t, "metric": "accuracy", "value": v}
            for t, v in values.items()]
    members.append((arm, seed, f"{arm}_{seed}", rows))
  rounds = [{"step": r, "split": "validation", "task": task, "metric": metric, "value": v}
            for r, v in enumerate([0.2, 0.4, 0.5])
            for task, metric in (("s", "accuracy"), ("s", "score"), ("average", "score"))]
  members.append(("rounds", 0, "fusion_0", rounds))
  summary = study_report.summarize(_study_folder(tmp_path / "cf", "cf", "base", members))
  assert summary["tasks"] == ["a", "b", "s", study_report.AVERAGE]
  rows = {(r["arm"], r["task"]): r for r in summary["rows"]}
  assert rows[("base", study_report.AVERAGE)]["mean"] == pytest.approx(0.4)
  fused = rows[("fused", study_report.AVERAGE)]
  assert fused["mean"] == pytest.approx(0.55) and fused["diff_mean"] == pytest.approx(0.15)
  assert ("rounds", study_report.AVERAGE) not in rows
  assert rows[("rounds", "s")]["mean"] == pytest.approx(0.5)  # its last round
  assert summary["curves"]["s"]["accuracy"]["rounds"] == {0: 0.2, 1: 0.4, 2: 0.5}
  assert summary["averaged"] == ["a", "b"]
  assert "the mean over a, b (the tasks `base` is scored on)" in study_report.markdown(summary)


# ------------------------------------------------------------------------------------------
# A real study


# Two more stages for the real study: ColD Fusion (one round of one contributor, from
# random init: it needs no other run) and a fine-tuning of each seed from its fused model.
FUSION_STAGES = """\
  fusion:
    command: fuse
    gin_files: [models/t5_1_1/tiny.gin, experiments/cold_fusion.gin]
    bindings: {CONTRIBUTOR_POOL: [study_toy], ROUNDS: 1, CONTRIBUTOR_STEPS: 4,
               NUM_EVAL_EXAMPLES: 8}
    grid: {FUSION_SEED: [0]}
  recycled:
    gin_files: [models/t5_1_1/tiny.gin, runs/finetune.gin]
    grid: {SEED: [0, 1]}
    bindings: {INITIAL_CHECKPOINT_PATH: {stage: fusion}}
"""


@pytest.fixture(scope="module")
def study_run(ray_session, toy_task_file, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("study")
  text = _spec_text(tmp, toy_task_file, arms="""\
      arms:
        scratch: {stage: first}
        continued: {stage: second}
        fused: {stage: recycled}
      reference: scratch
      """).replace("arms:\n", FUSION_STAGES + "arms:\n", 1)
  path = _write(tmp, text)
  first = study.run_study(path, verbose=0)
  runs = [r.trial.model_dir for r in study.load_study(path).all_runs()]
  attempts = {d: len(Path(d, sweep.ATTEMPTS_FILE).read_text().splitlines()) for d in runs}
  again = study.run_study(path, verbose=0)  # started again: nothing is left to run
  return {"path": path, "first": first, "again": again, "runs": runs,
          "attempts": attempts, "dir": tmp / "studies/toy"}


@pytest.mark.slow  # many processes: `make test-slow`
def test_study_runs_its_stages_in_order_and_a_second_start_reruns_nothing(study_run):
  first, again = study_run["first"], study_run["again"]
  stages = ("first", "second", "fusion", "recycled")
  assert first.failed == {} and first.skipped == {s: [] for s in stages}
  seeds = ["000_SEED=0", "001_SEED=1"]
  assert {s: sorted(r) for s, r in first.ran.items()} == {
      "first": seeds, "second": seeds, "fusion": ["000_FUSION_SEED=0"], "recycled": seeds}
  assert again.ran == {s: [] for s in stages} and again.failed == {}
  for model_dir in study_run["runs"]:
    assert (Path(model_dir) / sweep.DONE_FILE).exists()
    assert study_run["attempts"][model_dir] == 1
    assert len(Path(model_dir, sweep.ATTEMPTS_FILE).read_text().splitlines()) == 1
  # The second stage started from the first's parameters, seed for seed.
  log = (study_run["dir"] / "second/runs/001_SEED=1" / sweep.LOG_FILE).read_text()
  assert f"initialised from {study_run['dir'] / 'first/runs/001_SEED=1'}" in log
  # The fuse stage ran `recast fuse` in its run folder, and the next stage started from the
  # fused model of its last round.
  fusion_dir = study_run["dir"] / "fusion/runs/000_FUSION_SEED=0"
  assert (fusion_dir / "round_1/DONE").is_file() and (fusion_dir / "scores.md").is_file()
  log = (study_run["dir"] / "recycled/runs/000_SEED=0" / sweep.LOG_FILE).read_text()
  assert f"initialised from {fusion_dir}" in log
  # Runs start as soon as they can, not stage after stage, the runs others wait on first:
  # the fusion (it names no run; `recycled` needs it) started before any run of `second`, a
  # stage listed before it that needs `first`, had finished. (Not "before any started": when
  # both runs of `first` end together, the fusion and a run of `second` are handed out in
  # the same instant and their processes race to write the start time.)
  def started(model_dir):
    return json.loads(Path(model_dir, sweep.ATTEMPTS_FILE).read_text().splitlines()[0])[
        "started"]
  def finished(model_dir):
    return json.loads(Path(model_dir, sweep.DONE_FILE).read_text())["finished"]
  assert started(fusion_dir) < min(finished(study_run["dir"] / "second/runs" / s)
                                   for s in seeds)


@pytest.mark.slow  # many processes: `make test-slow`
def test_study_report_equals_the_numbers_recomputed_from_metrics(study_run):
  folder = study_run["dir"]
  with open(folder / "report/summary.csv") as f:
    rows = {(r["arm"], r["metric"]): r for r in csv.DictReader(f)}
  assert {m for _, m in rows} == {"accuracy", "rank_accuracy"}

  def final(stage, seed, metric):
    got = [r for r in metrics_writer.read_metrics(folder / stage / "runs" / f"00{seed}_SEED="
                                                   f"{seed}")
           if r["split"] == "validation" and r["metric"] == metric and r["task"] == TASK]
    return max(got, key=lambda r: r["step"])["value"]

  for metric in ("accuracy", "rank_accuracy"):
    scratch = np.array([final("first", s, metric) for s in (0, 1)])
    continued = np.array([final("second", s, metric) for s in (0, 1)])
    for arm, values in (("scratch", scratch), ("continued", continued)):
      row = rows[(arm, metric)]
      half = T975[1] * np.std(values, ddof=1) / math.sqrt(2)
      np.testing.assert_allclose(
          [float(row[k] or "nan") for k in ("mean", "std", "ci95_low", "ci95_high")],
          [values.mean(), np.std(values, ddof=1), values.mean() - half,
           values.mean() + half] if values.std() > 0 else
          [values.mean(), 0.0, values.mean(), values.mean()], atol=1e-9)
    diffs = continued - scratch
    row = rows[("continued", metric)]
    assert float(row["diff_mean"]) == pytest.approx(diffs.mean())
    assert int(row["diff_pairs"]) == 2
    sign = np.sign(diffs.mean())
    assert int(row["diff_agree"]) == int(sum(np.sign(d) == sign for d in diffs))
    baseline = next(r["value"] for r in metrics_writer.read_metrics(
        folder / "first/runs/000_SEED=0") if r["split"] == metrics_writer.BASELINE_SPLIT
        and r["metric"] == metric)
    assert float(row["baseline"]) == pytest.approx(baseline)
  assert (folder / f"report/curves_{TASK}.png").exists()


@pytest.mark.slow  # many processes: `make test-slow`
def test_a_run_waiting_for_gpus_holds_back_no_cpu_run(ray_session, toy_task_file, tmp_path):
  """No max_concurrent_trials: while a run of `first` has both (fake) GPUs and the other
  waits for them, the CPU-only run of a later stage starts on the free CPU (Tune kept one
  trial of a searcher pending at a time, so it waited for the GPU run to end)."""
  text = _spec_text(tmp_path, toy_task_file).replace("max_concurrent_trials: 2\n", "")
  text = text.replace("  first:\n", "  first:\n    resources_per_trial: {gpu: 2, cpu: 1}\n", 1)
  text = text.replace("arms:\n", "  cpu_only:\n"
                      "    gin_files: [models/t5_1_1/tiny.gin, runs/finetune.gin]\n"
                      "    grid: {SEED: [0]}\n"
                      "arms:\n", 1)
  assert "max_concurrent_trials" not in text and "cpu_only:" in text and "gpu: 2" in text
  outcome = study.run_study(_write(tmp_path, text), verbose=0)
  assert outcome.failed == {}
  runs = tmp_path / "studies/toy"
  start = {d.parent.parent.name + "/" + d.name: json.loads(
      (d / sweep.ATTEMPTS_FILE).read_text().splitlines()[0]) for d in runs.glob("*/runs/*")}
  assert sorted(start) == ["cpu_only/000_SEED=0", "first/000_SEED=0", "first/001_SEED=1",
                           "second/000_SEED=0", "second/001_SEED=1"]
  assert [len(start[f"first/{s}"]["gpu_ids"]) for s in ("000_SEED=0", "001_SEED=1")] == [2, 2]
  first_done = min(json.loads((runs / "first/runs" / s / sweep.DONE_FILE).read_text())[
      "finished"] for s in ("000_SEED=0", "001_SEED=1"))
  assert start["cpu_only/000_SEED=0"]["started"] < first_done


# ------------------------------------------------------------------------------------------
# The vocabulary and the warmup


def test_without_a_vocabulary_the_study_builds_one_for_every_run(tmp_path, toy_task_file,
                                                                  monkeypatch):
  monkeypatch.setenv("RECAST_CACHE_DIR", str(tmp_path / "cache"))
  text = _spec_text(tmp_path, toy_task_file).replace(f"vocabulary: {TOY_VOCAB}\n", "")
  spec = study.load_study(_write(tmp_path, text))
  assert spec.vocabulary is None
  assert study.compared_task_names(spec) == [TASK]
  built = study.build_vocabulary(spec)
  assert Path(built).parent == tmp_path / "cache/vocabularies" and Path(built).is_file()
  assert study.build_vocabulary(spec) == built  # cached by content: built once
  spec = study.load_study(_write(tmp_path, text), vocabulary=built)
  assert all(f"VOCABULARY='{built}'" in r.trial.bindings for r in spec.all_runs())


def test_pretraining_keeps_t5s_rate_and_a_higher_flat_rate_warns(capsys):
  import argparse
  import gin
  from recast import gin_config
  from recast.trainer import run_values, train
  assert run_values.fraction_of_steps(20000, 0.05) == 1000
  assert run_values.fraction_of_steps(300, 0.05) == 15
  gin_config.parse_run_flags(argparse.Namespace(
      gin_file=["models/t5_1_1/tiny.gin", "experiments/self_pretraining/pretrain_self.gin"],
      gin_bindings=["TASK='glue_rte'", "MODEL_DIR='/tmp/unused'", "PRETRAIN_STEPS=1200"],
      gin_search_paths=[]), command="train", required_macros=train.REQUIRED_MACROS,
      finalize=False)
  # A shortened pretraining run keeps T5's 1/sqrt(10000) = 0.01: no warning.
  assert run_values.resolve_gin_value(gin.query_parameter("rsqrt_schedule.warmup_steps")) \
      == 10000
  assert run_values.check_schedule(train_steps=gin_config.macro_value("TRAIN_STEPS")) is None
  assert capsys.readouterr().err == ""
  gin.clear_config(clear_constants=False)
  gin.parse_config("rsqrt_schedule.warmup_steps = 1000")
  message = run_values.check_schedule(train_steps=600)
  assert message.startswith("the rsqrt learning rate starts flat at "
                            "LEARNING_RATE/sqrt(WARMUP_STEPS) = 0.0316 for the whole run "
                            "(WARMUP_STEPS=1000 >= TRAIN_STEPS=600), 3.2x T5's 0.01")
  assert capsys.readouterr().err == f"warning: {message}\n"
  assert "until step 1000" in run_values.check_schedule(train_steps=5000, out=io.StringIO())
  assert run_values.check_schedule(train_steps=600, warmup_steps=40000) is None
  assert run_values.check_schedule(train_steps=600, warmup_steps=100,
                                   base_learning_rate=0.1) is None  # 0.01 again


def test_a_built_in_study_is_found_by_name_and_a_typo_names_the_close_one(tmp_path,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert study.find_spec(Path("multitask_smoke")) == study.BUILT_IN_DIR / "multitask_smoke.yaml"
  assert "compact_models_smoke" in study.built_in_studies()
  assert "multitask_smoke_tasks" not in study.built_in_studies()  # a task file, not a study
  with pytest.raises(study.StudySpecError, match="did you mean multitask_smoke "):
    study.find_spec(Path("multitask_smok.yaml"))
  with pytest.raises(study.StudySpecError, match="the built-in studies are "):
    study.find_spec(Path("nothing/like/this.yaml"))


def test_a_stage_limit_holds_that_stages_runs_only():
  """A stage's max_concurrent_trials limits its own runs, not the others' (the study's own
  max_concurrent_trials caps every run, through Tune)."""
  searcher = sweep.ready_first_searcher(
      ["a1", "a2", "b1"], {}, lambda k: True, {"a1": ("a", 1), "a2": ("a", 1),
                                               "b1": ("b", None)})
  assert searcher.suggest("1") == {"trial": "a1"}
  assert searcher.suggest("2") == {"trial": "b1"}  # a2 waits for a slot of stage a
  assert searcher.suggest("3") is None
  searcher.on_trial_complete("1")
  assert searcher.suggest("3") == {"trial": "a2"}


def test_the_scheduler_saved_by_tune_restores_to_the_same_next_run(tmp_path):
  """Tune saves the searcher with its experiment: the restored one hands out what the
  saved one would have, and knows which runs are done and which are still running."""
  def make():
    return sweep.ready_first_searcher(
        ["a", "b", "c"], {"c": ["a"]}, lambda k: True, {"a": ("s", 1), "b": ("s", 1),
                                                        "c": ("t", None)})
  searcher = make()
  assert searcher.suggest("1") == {"trial": "a"}
  searcher.save(str(tmp_path / "searcher.json"))
  restored = make()
  restored.restore(str(tmp_path / "searcher.json"))
  assert restored.suggest("2") is None  # stage s is full: a still runs
  restored.on_trial_complete("1")
  assert [restored.suggest("2"), restored.suggest("3")] == [{"trial": "b"}, {"trial": "c"}]


def test_a_paired_difference_that_is_float_noise_reads_zero():
  """Seeds that differ from the reference by +x and -x average to 0, not to 1e-15, and no
  seed agrees in sign with a zero mean."""
  rows = study_report._arm_rows("t", "accuracy", {
      "ref": {0: 67.70833333333333, 1: 67.70833333333333},
      "arm": {0: 67.70833333333333 + 0.2604166666666714, 1: 67.70833333333333 - 0.2604166666666572}},
      None, "ref")
  arm = next(r for r in rows if r["arm"] == "arm")
  assert arm["diff_mean"] == 0
  assert arm["diff_agree"] == 0 and arm["diff_pairs"] == 2
