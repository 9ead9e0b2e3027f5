"""The vocabulary travels with the run: a run trained with a relative VOCABULARY path is
evaluated and served from another directory with no VOCABULARY set; a VOCABULARY that is
another vocabulary is an error naming both."""

import json
import shutil
import textwrap
from pathlib import Path

import seqio

from recast import cli
from recast.trainer import evaluation, infer  # noqa: F401  (their configurables, before gin locks)

TOY_VOCAB = Path(seqio.__file__).parent / "test_data/sentencepiece/sentencepiece.model"
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"


def _task_file(folder: Path) -> Path:
  rows = [{"text": f"a b c {i}", "label": "a" if i % 2 else "b"} for i in range(16)]
  (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = folder / "tasks.yaml"
  path.write_text(textwrap.dedent("""\
      tasks:
        - name: vocab_travel_toy
          files: {train: rows.jsonl, validation: rows.jsonl}
          inputs: "{text}"
          targets: "{label}"
          labels: [a, b]
          metrics: [accuracy]
      """))
  return path


def test_run_carries_its_vocabulary_to_eval_and_infer(tmp_path, monkeypatch, capsys):
  train_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
  (train_dir / "vocab").mkdir(parents=True)
  elsewhere.mkdir()
  shutil.copy(TOY_VOCAB, train_dir / "vocab" / "x.model")
  tasks = _task_file(tmp_path)
  monkeypatch.chdir(train_dir)
  assert cli.main(["train", f"--tasks_file={tasks}", "--gin_file=models/t5_1_1/tiny.gin",
                   "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='run'",
                   "--gin.MIXTURE_OR_TASK_NAME='vocab_travel_toy'",
                   "--gin.VOCABULARY='vocab/x.model'", LENGTHS, "--gin.BATCH_SIZE=4",
                   "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=0",
                   "--gin.train.max_truncated_fraction=1.0"]) == 0
  run = train_dir / "run"
  assert (run / "spiece.model").read_bytes() == TOY_VOCAB.read_bytes()

  monkeypatch.chdir(elsewhere)  # vocab/x.model is not found from here: the run's copy is used
  capsys.readouterr()
  assert cli.main(["eval", f"--tasks_file={tasks}", f"--gin.CHECKPOINT_PATH='{run}'",
                   "--gin.MIXTURE_OR_TASK_NAME='vocab_travel_toy'", LENGTHS,
                   "--gin.Evaluator.num_examples=4"]) == 0
  assert "step 2 validation vocab_travel_toy:" in capsys.readouterr().out
  (elsewhere / "in.txt").write_text("a b c 1\n")
  assert cli.main(["infer", f"--gin.CHECKPOINT_PATH='{run}'", "--gin.INPUT_FILE='in.txt'",
                   "--gin.INFER_OUTPUT_DIR='preds'", LENGTHS]) == 0
  assert list((elsewhere / "preds").glob("*.jsonl"))

  assert cli.main(["eval", f"--tasks_file={tasks}", f"--gin.CHECKPOINT_PATH='{run}'",
                   "--gin.MIXTURE_OR_TASK_NAME='vocab_travel_toy'", LENGTHS,
                   "--gin.VOCABULARY='byte'"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 or not err[-1].startswith("  "), err
  assert ("gin macro VOCABULARY is byte, but checkpoint" in err[-1]
          and str(run / "spiece.model") in err[-1])
