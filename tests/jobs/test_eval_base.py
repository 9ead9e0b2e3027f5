"""`recast eval-base`: the model-recycling table (gains, seen/unseen) and a real run."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from recast import cli, metrics_writer
from recast.trainer import checkpoints, network
from recast.jobs import eval_base, report

REPO = Path(__file__).resolve().parents[2]


def test_recycling_table_gains_and_seen_unseen():
  scores = {"base": {"glue_rte": [60.0, 64.0], "glue_cola": [10.0, 10.0],
                     "super_glue_cb": [50.0, 56.0]},
            "reference": {"glue_rte": [58.0, 58.0], "glue_cola": [12.0, 14.0],
                          "super_glue_cb": [40.0, 40.0]}}
  table = report.recycling_table(scores, seen=["glue_rte", "glue_cola"])
  rows = {r["task"]: r for r in table["rows"]}
  # Sample std over seeds (n - 1): sqrt(((60-62)^2 + (64-62)^2) / 1) = sqrt(8).
  assert rows["glue_rte"]["base"] == 62.0 and rows["glue_rte"]["base_std"] == pytest.approx(8 ** 0.5)
  assert rows["glue_rte"]["gain"] == 4.0 and rows["glue_cola"]["gain"] == -3.0
  assert rows["super_glue_cb"]["gain"] == 13.0 and not rows["super_glue_cb"]["seen"]
  assert table["average"]["all"]["gain"] == pytest.approx(14.0 / 3)
  assert table["average"]["seen"] == {"tasks": 2, "base": 36.0, "reference": 35.5,
                                      "gain": 0.5}
  assert table["average"]["unseen"]["gain"] == 13.0
  no_reference = report.recycling_table({"base": scores["base"]})
  assert "gain" not in no_reference["average"]["all"]
  assert "unseen" in no_reference["average"] and "seen" not in no_reference["average"]


def test_report_files(tmp_path):
  table = report.recycling_table(
      {"base": {"glue_rte": [60.0], "super_glue_cb": [50.0]},
       "reference": {"glue_rte": [58.0], "super_glue_cb": [55.0]}}, seen=["glue_rte"])
  eval_base.write_report(tmp_path, table)
  md = (tmp_path / "eval_base.md").read_text()
  assert "| all | 2 | 55.00 | 56.50 | -1.50 |" in md
  unseen, seen = md.index("## Unseen"), md.index("## Seen")
  assert md.index("| super_glue_cb |") > unseen and unseen < seen < md.index("| glue_rte |")
  csv = (tmp_path / "eval_base.csv").read_text().splitlines()
  assert csv[0] == "task,seen,base,base_std,reference,reference_std,gain"
  assert csv[1] == "glue_rte,True,60.0,,58.0,,2.0"  # one seed: no sample std
  assert json.loads((tmp_path / "eval_base.json").read_text())["average"]["seen"]["gain"] == 2.0


def test_run_score_and_task_set(tmp_path, monkeypatch):
  import gin
  gin.clear_config(clear_constants=False)  # Tasks read TFDS metadata here: no data dir.
  monkeypatch.delenv("RECAST_DATA_DIR", raising=False)
  writer = metrics_writer.MetricsWriter(tmp_path, tensorboard=False)
  writer.write(4, "train", "", {"loss": 2.0})
  writer.write(4, "validation", "glue_mrpc", {"accuracy": 70.0, "f1": 60.0, "loss": 1.5,
                                              "token_accuracy": 0.9})
  assert eval_base.run_score(tmp_path, task="glue_mrpc", step=4) == 65.0
  with pytest.raises(eval_base.RecyclingError, match="no validation metrics for glue_mrpc "
                     "at step 8"):
    eval_base.run_score(tmp_path, task="glue_mrpc", step=8)
  names = eval_base.task_names("recycling36")
  assert len(names) == 36 and "glue_rte" in names and "tweet_eval_irony" in names
  assert eval_base.eval_split("glue_rte") == "validation"
  assert eval_base.eval_split("twenty_newsgroups") == "test"  # no validation split
  with pytest.raises(eval_base.RecyclingError, match="EVAL_BASE_TASKS is empty"):
    eval_base.task_names([])


def _eval_base_argv(out, data_dir, reference) -> list[str]:
  return ["eval-base", "--gin_file=models/t5_1_1/tiny.gin",
          "--gin_file=experiments/cold_fusion/eval_base.gin", f"--gin.EVAL_BASE_DIR={out}",
          f"--gin.DATA_DIR={data_dir}", "--gin.VOCABULARY='byte'",
          "--gin.BASE_CHECKPOINT='scratch'", f"--gin.REFERENCE_CHECKPOINT={reference}",
          "--gin.EVAL_BASE_TASKS=['glue_rte', 'super_glue_cb']",
          "--gin.SEEN_TASKS=['glue_rte']", "--gin.EVAL_BASE_SEEDS=[0]",
          "--gin.FINETUNE_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.NUM_EVAL_EXAMPLES=8",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
          "--gin.train.max_truncated_fraction=1.0", "--gin.EVAL_BASE_PARALLEL='sequential'"]


@pytest.mark.timeout(2400)
@pytest.mark.slow  # many processes: `make test-slow`
def test_eval_base_on_real_tasks(shared_data, tmp_path, monkeypatch):
  from recast.tasks import vocabularies
  monkeypatch.chdir(REPO)
  config = network.T5Config(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_encoder_layers=2,
                            num_decoder_layers=2).with_vocab_size(
                                vocabularies.byte_vocabulary().vocab_size)
  reference = checkpoints.save_param_checkpoint(
      tmp_path / "reference", nn.unbox(network.init_params(config, jax.random.PRNGKey(5))),
      config=config, vocabulary=vocabularies.describe(vocabularies.byte_vocabulary()))
  out = tmp_path / "eval"
  assert cli.main(_eval_base_argv(out, shared_data, reference)) == 0
  table = json.loads((out / "eval_base.json").read_text())
  rows = {r["task"]: r for r in table["rows"]}
  assert set(rows) == {"glue_rte", "super_glue_cb"}
  assert rows["glue_rte"]["seen"] and not rows["super_glue_cb"]["seen"]
  for task, row in rows.items():
    base = json.loads((out / "base" / task / "seed_0" / "DONE").read_text())["score"]
    ref = json.loads((out / "reference" / task / "seed_0" / "DONE").read_text())["score"]
    assert 0 <= base <= 100 and 0 <= ref <= 100
    assert row["gain"] == pytest.approx(base - ref)
    # The reference run started from the reference checkpoint; the base from scratch.
    assert str(reference) in (out / "reference" / task / "seed_0" / "config.gin").read_text()
  assert table["average"]["unseen"]["gain"] == pytest.approx(rows["super_glue_cb"]["gain"])
  md = (out / "eval_base.md").read_text()
  assert "## Unseen tasks" in md and "## Seen tasks" in md
  print(md)
  # Run again: every run is DONE, nothing is trained again.
  stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed_0/DONE")}
  assert len(stamps) == 4
  assert cli.main(_eval_base_argv(out, shared_data, reference)) == 0
  assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
