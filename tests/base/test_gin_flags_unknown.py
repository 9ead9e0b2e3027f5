"""`--gin.NAME=VALUE` bindings nothing reads are rejected by every command, before it runs."""

import argparse
import glob
import re
import shlex

import pytest

from recast import cli, gin_config
from tests.conftest import REPO

RUN = ["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin"]


def _error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  errors = [line for line in err if "error:" in line]
  assert len(errors) == 1 and errors[0] == err[-1], err  # one line, the last thing printed
  return errors[0]


def test_a_misspelt_macro_is_rejected_with_the_close_match(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert cli.main(["train", *RUN, f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=2",
                   "--gin.TRAIN_STEP=5"]) == 2
  line = _error_line(capsys)
  assert line == ("recast train: error: --gin.TRAIN_STEP=5: gin macro TRAIN_STEP is neither "
                  "defined nor used by models/t5_1_1/tiny.gin, runs/finetune.gin; did you "
                  "mean TRAIN_STEPS?")
  assert not model_dir.exists()


def test_a_misspelt_parameter_or_configurable_is_one_line_with_the_close_match(capsys):
  assert cli.main(["train", *RUN, "--gin.train.batch_sze=3"]) == 2
  assert _error_line(capsys).endswith(
      "invalid gin binding --gin.train.batch_sze=3: Configurable 'train' doesn't have a "
      "parameter named 'batch_sze'; did you mean train.batch_size?")
  assert cli.main(["train", *RUN, "--gin.trian.batch_size=3"]) == 2
  assert _error_line(capsys).endswith(
      "No configurable matching 'trian'; did you mean train.batch_size?")


def test_a_command_without_gin_files_knows_the_macros_code_reads(tmp_path, capsys):
  # DATA_DIR is read by tasks/sources.py, not by a gin file.
  assert cli.main(["tasks", "list", "--json", f"--gin.DATA_DIR={tmp_path}"]) == 0
  capsys.readouterr()
  assert cli.main(["tasks", "list", f"--gin.DAT_DIR={tmp_path}"]) == 2
  assert "gin macro DAT_DIR is neither defined nor used by any gin file (none given); did " \
      "you mean DATA_DIR or TASK_DATA_DIRS?" in _error_line(capsys)


def _parse(gin_files, bindings, required=()):
  gin_config.parse_run_flags(argparse.Namespace(
      gin_file=list(gin_files), gin_bindings=list(bindings), gin_search_paths=[]),
      command="train", required_macros=required, finalize=False)


def test_a_macro_a_gin_file_only_refers_to_is_known(tmp_path):
  run_file = tmp_path / "run.gin"
  run_file.write_text("import recast.trainer.train\ntrain.model_dir = %RUN_FOLDER\n")
  _parse([str(run_file)], ["RUN_FOLDER='/tmp/x'"])
  _parse([str(run_file)], ["OTHER=1", "train.seed=%OTHER"])  # a binding refers to it
  _parse([str(run_file)], ["EXTRA=1"], required=["EXTRA"])  # the command requires it
  with pytest.raises(gin_config.GinConfigError, match=r"did you mean RUN_FOLDER\?"):
    _parse([str(run_file)], ["RUN_FOLDR='/tmp/x'"])


def _documented_commands():
  """Each `recast ...` command in the headers of gin/runs and gin/experiments files."""
  for path in sorted(glob.glob(str(REPO / "gin/runs/*.gin")) +
                     glob.glob(str(REPO / "gin/experiments/**/*.gin"), recursive=True)):
    comments = "\n".join(re.sub(r"^\s*#\s?", "", line.rstrip()) for line in open(path)
                         if line.lstrip().startswith("#")).replace("\\\n", " ")
    for match in re.finditer(r"recast [a-z-]+ ((?:\$\w+ )*--gin_file=.*)", comments):
      yield path, match.group(1)


DOCUMENTED = list(_documented_commands())


def test_gin_files_document_commands():
  assert len(DOCUMENTED) >= 20  # the scan below really finds the files' examples


@pytest.mark.parametrize("path, command", DOCUMENTED, ids=[
    f"{i}-{p.rsplit('gin/', 1)[-1]}" for i, (p, _) in enumerate(DOCUMENTED)])
def test_every_documented_command_binds_only_known_macros(path, command):
  """Run files that leave macros to the command line (MODEL_DIR, TASK, ...) still take them;
  `$M`-style shell variables stand for a model file and more bindings, left out here."""
  args, bindings = gin_config.split_gin_bindings(shlex.split(command))
  gin_files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
  _parse(gin_files, bindings)
