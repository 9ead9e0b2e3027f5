"""Files recast writes for users are ordinary: 0644 files, 0755 folders under umask 022."""

import os
import stat

import flax.linen as nn
import jax
import pytest

from recast import atomic_files
from recast.trainer import checkpoints, network

CONFIG = network.T5Config(vocab_size=128, d_model=16, num_heads=2, d_kv=8, d_ff=24,
                          num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def _modes(root) -> dict[str, int]:
  """Relative path ("." for `root`) -> permission bits, for every folder and file."""
  modes = {".": stat.S_IMODE(os.stat(root).st_mode)}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      modes[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
  return modes


def _is_dir(root, rel) -> bool:
  return os.path.isdir(os.path.join(root, rel))


def test_staged_dir_is_0755_with_0644_files(tmp_path, umask_022):
  final = tmp_path / "out"
  with atomic_files.staged_dir(final) as tmp:
    (tmp / "sub").mkdir(mode=0o700)
    fd = os.open(tmp / "sub" / "secretive.bin", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    atomic_files.write_json(tmp / "meta.json", {"a": 1})
  assert _modes(final) == {".": 0o755, "sub": 0o755, "sub/secretive.bin": 0o644,
                           "meta.json": 0o644}


def test_staged_dir_respects_a_stricter_umask(tmp_path):
  old = os.umask(0o077)
  try:
    with atomic_files.staged_dir(tmp_path / "out") as tmp:
      (tmp / "f").write_text("x")
  finally:
    os.umask(old)
  assert _modes(tmp_path / "out") == {".": 0o700, "f": 0o600}


def test_staged_dir_on_error_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with atomic_files.staged_dir(tmp_path / "out") as tmp:
      (tmp / "f").write_text("x")
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


def test_param_checkpoint_is_readable_by_others(tmp_path, umask_022):
  params = nn.unbox(network.init_params(CONFIG, jax.random.PRNGKey(0)))
  path = checkpoints.save_param_checkpoint(tmp_path / "ckpt", params, config=CONFIG)
  modes = _modes(path)
  assert {"recast_checkpoint.json", "params"} <= set(modes)
  folders = {rel for rel in modes if _is_dir(path, rel)}
  assert {modes[rel] for rel in folders} == {0o755}
  assert {modes[rel] for rel in set(modes) - folders} == {0o644}
