"""The wheel is the product: it holds only `recast` (gin files included) and trains when
installed outside the checkout, with the checkout nowhere on the path."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What is not source: copying it would only slow the build or leak stale files into it.
NOT_SOURCE_AT_TOP = {".git", ".venv", "build", "dist", "runs", "tmp", ".pytest_cache"}


def _not_source(folder: str, names: list[str]) -> set[str]:
  """shutil.copytree's ignore: build leftovers anywhere, and the checkout's own scratch
  folders only at its top (gin/runs/ is source)."""
  ignored = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}
  if Path(folder) == REPO:
    ignored |= NOT_SOURCE_AT_TOP & set(names)
  return ignored


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                                  f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
  return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """The wheel of the working tree, built offline. The build runs on a copy so that it writes
  no build/ or egg-info into the checkout, and no file deleted there survives in build/lib."""
  for backend in ("setuptools", "wheel"):
    try:
      __import__(backend)
    except ImportError:
      pytest.skip(f"{backend} is not installed; `pip install -c constraints.txt -e .[dev]`")
  tmp = tmp_path_factory.mktemp("wheel")
  source = tmp / "source"
  shutil.copytree(REPO, source, ignore=_not_source)
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", str(tmp / "dist"), str(source)], cwd=tmp)
  (built,) = (tmp / "dist").glob("recast-*.whl")
  return built


def test_wheel_holds_only_recast_and_its_gin_files(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  top = {name.split("/")[0] for name in names}
  dist_info = {t for t in top if t.endswith(".dist-info")}
  assert len(dist_info) == 1 and dist_info.pop().startswith("recast-")
  assert top - {t for t in top if t.endswith(".dist-info")} == {"recast"}
  for path in ("recast/gin/runs/finetune.gin", "recast/gin/models/t5_1_1/tiny.gin",
               "recast/tasks/__init__.py", "recast/trainer/train.py", "recast/jobs/__init__.py",
               "recast/mixtures/lookup.py", "recast/cli.py", "recast/__main__.py"):
    assert path in names, f"{path} missing from {wheel.name}"
  assert "recast/gin/__init__.py" not in names  # a gin package would shadow gin-config


TASK_FILE = """\
tasks:
  - name: packaging_toy
    files: {train: toy.jsonl, validation: toy.jsonl}
    inputs: "toy: {text}"
    targets: "{label}"
    labels: [pos, neg]
"""


def test_installed_wheel_trains_outside_the_checkout(wheel, tmp_path):
  site = tmp_path / "site"
  _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
        "--target", str(site), str(wheel)])
  work = tmp_path / "work"  # neither the checkout nor a parent of it
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", RECAST_CACHE_DIR=str(tmp_path / "cache"))
  # The venv's editable install maps `recast` to the checkout with a finder at the end of
  # sys.meta_path; the --target directory on PYTHONPATH is found first, so the wheel must win.
  where = _run([sys.executable, "-c", textwrap.dedent("""
      import json, recast, recast.trainer.train, recast.gin_config
      print(json.dumps([recast.__file__, recast.trainer.train.__file__,
                        recast.gin_config.__file__]))""")], cwd=work, env=env)
  for module_file in json.loads(where.stdout.splitlines()[-1]):
    assert Path(module_file).resolve().is_relative_to(site.resolve()), module_file
    assert not Path(module_file).resolve().is_relative_to(REPO), module_file

  rows = [{"text": f"example {i} {'a' * (i % 5)}", "label": ["pos", "neg"][i % 2]}
          for i in range(16)]
  (work / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (work / "tasks.yaml").write_text(TASK_FILE)
  model_dir = tmp_path / "model"
  result = _run([sys.executable, "-m", "recast", "train", "--tasks_file", "tasks.yaml",
                 "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin",
                 f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='packaging_toy'",
                 "--gin.VOCABULARY='byte'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                 "--gin.BATCH_SIZE=2", "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=0"],
                cwd=work, env=env, timeout=300)
  for noise in ("cudart_stub", "cuInit", "oneDNN"):  # start-up is quiet (recast/cli.py)
    assert noise not in result.stderr, result.stderr
  assert any(p.name.startswith("checkpoint_") for p in model_dir.iterdir()), \
      sorted(p.name for p in model_dir.iterdir())
  records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert records and max(r["step"] for r in records) == 2
  assert (model_dir / "config.gin").is_file()
