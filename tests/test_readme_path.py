"""The README's "From a CSV file to a model in transformers" section, run as written.

The YAML block becomes reviews/tasks.yaml, small CSV files are written beside it, and every
command of the shell block runs in a fresh folder: `recast ...` through the command line's
entry point (TRAIN_STEPS and EVAL_PERIOD made small, the only changes), `python -c` in a
subprocess. A README edit that breaks the path breaks this test.
"""

import csv
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SMALLER = {"TRAIN_STEPS": "4", "EVAL_PERIOD": "4", "BATCH_SIZE": "8"}


def readme_blocks() -> tuple[str, list[str]]:
  """(the YAML text, the shell commands with continuations joined)."""
  text = README.read_text()
  section = text.split("<!-- readme-path:begin -->")[1].split("<!-- readme-path:end -->")[0]
  yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
  shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
  commands, current = [], ""
  for line in shell.splitlines():
    current += line[:-1] + " " if line.endswith("\\") else line + "\n"
    if not line.endswith("\\") and not (current.count('"') % 2):
      commands.append(current.strip())
      current = ""
  return yaml_text, [c for c in commands if c]


def _smaller(argv: list[str]) -> list[str]:
  out = []
  for arg in argv:
    match = re.fullmatch(r"--gin\.(\w+)=(.*)", arg)
    out.append(f"--gin.{match.group(1)}={SMALLER[match.group(1)]}"
               if match and match.group(1) in SMALLER else arg)
  return out


def _write_csvs(folder: Path) -> None:
  rng = random.Random(0)
  words = {"positive": ("lovely", "great", "fine"), "negative": ("dull", "awful", "poor")}
  for split, n in (("train", 64), ("validation", 16)):
    with open(folder / f"{split}.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["text", "label"])
      for _ in range(n):
        label = rng.choice(sorted(words))
        writer.writerow([f"a {rng.choice(words[label])} film", label])


def test_readme_commands_take_a_csv_to_a_transformers_model(tmp_path, monkeypatch, capsys):
  pytest.importorskip("transformers")
  from recast import cli
  yaml_text, commands = readme_blocks()
  assert [c.split()[:2] for c in commands] == [
      ["recast", "tasks"], ["recast", "train"], ["recast", "report"], ["recast", "convert"],
      ["python", "-c"]]
  first_line = yaml_text.splitlines()[0]
  task_file = tmp_path / first_line.lstrip("# ").strip()
  task_file.parent.mkdir(parents=True)
  task_file.write_text(yaml_text)
  _write_csvs(task_file.parent)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("RECAST_CACHE_DIR", str(tmp_path / "cache"))
  for command in commands:
    argv = shlex.split(command)
    if argv[0] == "recast":
      assert cli.main(_smaller(argv[1:])) == 0, command
    else:
      done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
      assert done.returncode == 0, done.stderr[-3000:]
      assert len(done.stdout.splitlines()) == 1  # the decoded text (4 steps: maybe empty)
  out = capsys.readouterr().out
  assert "review: a " in out  # tasks show rendered the CSV rows
  run = tmp_path / "runs" / "reviews"
  assert (run / "checkpoint_4").is_dir() and (run / "spiece.model").is_file()
  assert (run / "report" / "report.md").is_file()
  exported = {p.name for p in (tmp_path / "hf" / "reviews").iterdir()}
  assert {"config.json", "model.safetensors", "generation_config.json"} <= exported
