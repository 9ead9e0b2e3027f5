"""recast.gin_config: gin includes resolve the same from any working directory."""

import importlib

import gin
import pytest

from recast import gin_config


def test_a_folder_named_like_an_include_folder_does_not_break_includes(tmp_path,
                                                                       monkeypatch):
  """`recast demo` writes ./runs/; with the working directory on sys.path that folder is a
  namespace package, on which gin 0.5.0's package reader crashed for every
  `include 'runs/finetune.gin'`."""
  for folder in ("runs", "experiments", "models"):
    (tmp_path / folder).mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert importlib.util.find_spec("runs").origin is None  # the trap is really set
  gin_config.parse_gin(["models/t5_1_1/tiny.gin", "experiments/cold_fusion.gin"],
                       ["FUSION_DIR = '/tmp/x'"], finalize=False)
  assert gin.query_parameter("%FUSION_DIR") == "/tmp/x"
  assert gin.query_parameter("%LEARNING_RATE") == 0.001  # from the included runs/finetune.gin


def test_includes_inside_python_packages_still_resolve(tmp_path, monkeypatch):
  site = tmp_path / "site"
  (site / "recast_extra_pkg").mkdir(parents=True)
  (site / "recast_extra_pkg" / "__init__.py").write_text("")
  (site / "recast_extra_pkg" / "extra.gin").write_text("EXTRA_MACRO = 7\n")
  user = tmp_path / "user"
  user.mkdir()
  (user / "mine.gin").write_text("include 'recast_extra_pkg/extra.gin'\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(site))
  importlib.invalidate_caches()
  gin_config.parse_gin([str(user / "mine.gin")], [], finalize=False)
  assert gin.query_parameter("%EXTRA_MACRO") == 7


def test_a_missing_include_is_a_named_error(tmp_path, monkeypatch):
  (tmp_path / "bad.gin").write_text("include 'runs/no_such_run.gin'\n")
  (tmp_path / "runs").mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  with pytest.raises(gin_config.GinConfigError, match="no_such_run.gin"):
    gin_config.parse_gin(["bad.gin"], [], finalize=False)
