"""recast.output_cache: `--help` and `tasks list` answered from their first run's output."""

import pytest

from recast import cli, gin_config, output_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("RECAST_CACHE_DIR", str(tmp_path / ".cache"))
  monkeypatch.delenv(output_cache.DISABLE_VARIABLE, raising=False)
  monkeypatch.chdir(tmp_path)
  return tmp_path / ".cache" / "output"


@pytest.fixture
def frozen_sources(monkeypatch):
  """recast's own files out of the key (other edits to the tree must not change it here);
  test_the_key_follows_recast_sources covers them."""
  monkeypatch.setattr(output_cache, "_package_dirs", lambda: [])


def test_which_commands_are_kept(monkeypatch):
  monkeypatch.delenv(output_cache.DISABLE_VARIABLE, raising=False)
  assert output_cache.cacheable(["train", "--help"])
  assert output_cache.cacheable(["tasks", "show", "-h"])
  assert output_cache.cacheable(["tasks", "list", "--tasks_file=t.yaml"])
  assert not output_cache.cacheable(["tasks", "show", "glue_rte"])
  assert not output_cache.cacheable(["train", "--gin_file=x.gin"])
  assert not output_cache.cacheable(["--help"])  # answered without any import anyway
  monkeypatch.setenv(output_cache.DISABLE_VARIABLE, "1")
  assert not output_cache.cacheable(["train", "--help"])


def test_second_run_replays_the_first(cache, frozen_sources, capsys):
  calls = []

  def real_main(argv):
    calls.append(argv)
    print("listing", len(calls))
    return 0

  assert output_cache.run(["tasks", "list"], real_main) == 0
  assert output_cache.run(["tasks", "list"], real_main) == 0
  assert calls == [["tasks", "list"]]
  assert capsys.readouterr().out == "listing 1\nlisting 1\n"
  assert len(list(cache.glob("*.json"))) == 1


def test_a_changed_named_file_or_a_failure_is_run_again(cache, frozen_sources, tmp_path,
                                                        capsys):
  task_file = tmp_path / "tasks.yaml"
  task_file.write_text("tasks:\n  - {name: t, files: {train: train.jsonl}}\n")
  (tmp_path / "train.jsonl").write_text("{}\n")
  calls = []

  def real_main(argv):
    calls.append(1)
    print("run", len(calls))
    return 0 if len(calls) != 3 else 2

  argv = ["tasks", "list", f"--tasks_file={task_file}"]
  output_cache.run(argv, real_main)
  (tmp_path / "listing.txt").write_text("an output file beside: not part of the key\n")
  output_cache.run(["tasks", "list", "--tasks_file=./tasks.yaml"], real_main)  # same file
  assert len(calls) == 1
  (tmp_path / "train.jsonl").write_text("{}\n{}\n")  # the data the task file names
  output_cache.run(argv, real_main)
  assert len(calls) == 2
  task_file.write_text("tasks:\n  - {name: t, files: {train: train.jsonl}}  # edited\n")
  assert output_cache.run(argv, real_main) == 2  # failures are not kept...
  assert output_cache.run(argv, real_main) == 0  # ...so this one runs too
  assert output_cache.run(argv, real_main) == 0  # and this one is replayed
  assert len(calls) == 4
  assert capsys.readouterr().out.splitlines()[-1] == "run 4"


def test_the_key_follows_recast_sources(tmp_path, monkeypatch):
  source = tmp_path / "pkg" / "module.py"
  source.parent.mkdir()
  source.write_text("x = 1\n")
  monkeypatch.setattr(output_cache, "_package_dirs", lambda: [source.parent])
  before = output_cache.key(["train", "--help"])
  assert output_cache.key(["train", "--help"]) == before
  assert output_cache.key(["eval", "--help"]) != before
  source.write_text("x = 22\n")
  assert output_cache.key(["train", "--help"]) != before
  assert {p.name for p in output_cache._package_dirs()} == {"pkg"}
  monkeypatch.undo()
  found = {p.name for p in output_cache._package_dirs()}
  assert {"tasks", "mixtures", "trainer", "jobs", "gin"} <= found  # the checkout's folders


def test_recast_subcommand_help_through_the_cli(cache, capsys):
  with pytest.raises(SystemExit) as first:
    cli.main(["report", "--help"])
  assert first.value.code == 0
  shown = capsys.readouterr().out
  assert "usage: recast report" in shown
  assert len(list(cache.glob("*.json"))) == 1
  assert cli.main(["report", "--help"]) == 0  # replayed: no argparse exit this time
  assert capsys.readouterr().out == shown


def test_a_misspelt_gin_file_is_named_before_any_import(capsys):
  with pytest.raises(gin_config.GinConfigError, match=r"'models/t5_1_1/tyni.gin' not found.*"
                     r"did you mean models/t5_1_1/tiny.gin"):
    gin_config.check_gin_files(["train", "--gin_file", "models/t5_1_1/tyni.gin"])
  gin_config.check_gin_files(["train", "--gin_file=models/t5_1_1/tiny.gin"])  # exists
  assert cli.main(["eval", "--gin_file=runs/evl.gin"]) == 2
  assert "did you mean runs/eval.gin" in capsys.readouterr().err
