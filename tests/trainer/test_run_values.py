"""trainer.run_values: a run's settings are rejected, with the fix, before anything runs."""

import os

import pytest

from recast import errors
from recast.trainer import run_values

GOOD = dict(batch_size=32, train_steps=1000, task_feature_lengths={"inputs": 512, "targets": 128},
            eval_period=0, checkpoint_period=1000)


def test_good_values_pass():
  run_values.check_run_values(**GOOD)
  run_values.check_run_values(**{**GOOD, "eval_period": 100, "batch_size": 1, "train_steps": 1})


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "BATCH_SIZE=0: use a positive number of examples per step, e.g. "
                        "--gin.BATCH_SIZE=32"),
    ({"batch_size": 2.5}, "BATCH_SIZE=2.5 (got float, not a whole number): use a positive"),
    ({"train_steps": "abc"}, "TRAIN_STEPS='abc' (got str, not a whole number): use a positive "
                             "number of steps to train to, e.g. --gin.TRAIN_STEPS=1000"),
    ({"train_steps": -5}, "TRAIN_STEPS=-5: use a positive number"),
    ({"train_steps": True}, "TRAIN_STEPS=True (got bool, not a whole number)"),
    ({"eval_period": -1}, "EVAL_PERIOD=-1: use a non-negative number of steps between "
                          "evaluations (0: never), e.g. --gin.EVAL_PERIOD=1000"),
    ({"checkpoint_period": 0}, "CHECKPOINT_PERIOD=0: use a positive number of steps between "
                               "checkpoints"),
    ({"task_feature_lengths": 512}, "TASK_FEATURE_LENGTHS=512: use a dict of token lengths"),
    ({"task_feature_lengths": {"inputs": 512}},
     "TASK_FEATURE_LENGTHS={'inputs': 512} has no 'targets'; give both, e.g. "
     "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\""),
    ({"task_feature_lengths": {"input": 512, "target": 8}}, "has no 'inputs' or 'targets'"),
    ({"task_feature_lengths": {"inputs": 512, "targets": 0}},
     "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 0}: 'targets' must be a positive number "
     "of tokens"),
    ({"task_feature_lengths": {"inputs": "512", "targets": 8}}, "'inputs' must be a positive"),
])
def test_each_bad_value_names_the_macro_and_the_fix(change, message):
  with pytest.raises(errors.UserError) as raised:
    run_values.check_run_values(**{**GOOD, **change})
  text = str(raised.value)
  assert text.startswith(f"{next(iter(change)).upper()}=") and message in text
  assert "\n" not in text


def test_a_folder_that_exists_or_can_be_made_is_writable(tmp_path):
  run_values.check_writable(tmp_path)
  run_values.check_writable(tmp_path / "not" / "yet" / "made")
  assert not (tmp_path / "not").exists()  # nothing was created


def test_a_folder_under_a_file_cannot_be_made(tmp_path):
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(errors.UserError, match=r"MODEL_DIR='.*file.txt/run' cannot be created: "
                     r".*file.txt is a file, not a folder; choose another folder"):
    run_values.check_writable(tmp_path / "file.txt" / "run")
  with pytest.raises(errors.UserError, match=r"^INFER_OUTPUT_DIR="):
    run_values.check_writable(tmp_path / "file.txt", what="INFER_OUTPUT_DIR")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_read_only_folder_is_not_writable(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    with pytest.raises(errors.UserError, match=r"cannot be created: .*locked is not writable"):
      run_values.check_writable(locked / "run")
    with pytest.raises(errors.UserError, match=r"locked' is not writable by this user"):
      run_values.check_writable(locked)
  finally:
    locked.chmod(0o700)


def test_the_nearest_existing_folder_is_the_one_asked(tmp_path, monkeypatch):
  """As root os.access says yes to everything, so the refusal is stood in for here."""
  locked = tmp_path / "locked"
  locked.mkdir()
  asked = []
  monkeypatch.setattr(run_values.os, "access",
                      lambda path, mode: asked.append(str(path)) or str(path) != str(locked))
  with pytest.raises(errors.UserError, match=r"MODEL_DIR='.*locked/a/b' cannot be created: "
                     r".*locked is not writable by this user; choose another folder"):
    run_values.check_writable(locked / "a" / "b")
  assert asked == [str(locked)]
  run_values.check_writable(tmp_path / "elsewhere")
  assert asked[-1] == str(tmp_path)
