"""`recast demo` end to end at a few steps: it writes a study of two arms and runs it through
the study machinery (Ray, one process a run), then prints the study's report."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from recast.jobs import demo, study, study_report


@pytest.mark.slow  # three training processes: `make test-slow`
def test_demo_runs_its_study_and_reports_both_arms_against_the_baseline(ray_session, tmp_path,
                                                                      capsys):
  workdir = tmp_path / "demo"
  args = argparse.Namespace(workdir=str(workdir), pretrain_steps=20, finetune_steps=40,
                            batch_size=8, fresh=False)
  code = demo.main(args)
  out = capsys.readouterr().out
  assert code in (0, 1)  # 1: a task at or under its majority class (expected at 40 steps)
  spec = yaml.safe_load((workdir / "demo_study.yaml").read_text())
  assert list(spec["stages"]) == ["pretrain", "finetune"]
  loaded = study.load_study(workdir / "demo_study.yaml")
  assert set(loaded.arms) == set(demo.ARMS) and loaded.reference == "random"
  self_run = next(r for r in loaded.stages["finetune"].runs
                  if r.trial.point["INIT"] == "self_pretrained")
  assert self_run.depends_on == (f"pretrain/{loaded.stages['pretrain'].runs[0].trial.name}",)
  summary = study_report.summarize(workdir / "study")
  assert summary["arms"] == list(demo.ARMS)
  rows = {(r["arm"], r["task"], r["metric"]): r for r in summary["rows"]}
  for task in ("demo_sentiment", "demo_topic", "demo_entailment", "demo_arithmetic"):
    for arm in demo.ARMS:  # every task scored for both arms, with its majority baseline
      row = rows[(arm, task, "accuracy")]
      assert row["seeds"] == 1 and 0.0 <= row["mean"] <= 100.0 and row["baseline"] > 0
  assert ("self_pretrained", "demo_topic", "rank_accuracy") in rows
  assert "| random |" in out and "| self_pretrained |" in out and "| majority class |" in out
  assert "self-pretrained beats the majority class on" in out
  recorded = json.loads((workdir / "study" / study.STUDY_FILE).read_text())
  assert recorded["arm_order"] == list(demo.ARMS)
