"""Model gin files: each parses alone, binds only the architecture, has the published size."""

import functools
import re

import gin
import pytest

from recast import gin_config
from recast.trainer import network

MODELS = gin_config.GIN_DIR / "models"
ARCHITECTURE = {"d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                "num_decoder_layers", "feed_forward", "tie_word_embeddings"}
# google/t5-v1_1-{small,base}, t5-small, t5-base parameter counts (vocab 32128).
PUBLISHED = {"t5_1_1/small.gin": 76_961_152, "t5_1_1/base.gin": 247_577_856,
             "t5_1_0/small.gin": 60_506_624, "t5_1_0/base.gin": 222_903_552}
T5_1_1 = {"tiny": (64, 4, 2, 16, 128), "small": (512, 6, 8, 64, 1024),
          "base": (768, 12, 12, 64, 2048), "large": (1024, 16, 24, 64, 2816),
          "xl": (2048, 32, 24, 64, 5120), "xxl": (4096, 64, 24, 64, 10240)}


def _config(name: str) -> network.T5Config:
  gin_config.parse_gin([f"models/{name}"], [])
  try:
    return network.T5Config().with_vocab_size(32100)
  finally:
    gin.clear_config()


@functools.lru_cache(maxsize=None)
def _param_count(name: str) -> int:
  return network.param_count(_config(name))  # shapes only: xxl is not allocated


def _shape(cfg: network.T5Config) -> tuple:
  assert cfg.num_encoder_layers == cfg.num_decoder_layers
  return cfg.d_model, cfg.num_heads, cfg.num_encoder_layers, cfg.d_kv, cfg.d_ff


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
  assert _param_count(name) == PUBLISHED[name]


@pytest.mark.parametrize("size", sorted(T5_1_1))
def test_t5_1_1_sizes(size):
  cfg = _config(f"t5_1_1/{size}.gin")
  assert _shape(cfg) == T5_1_1[size]
  assert cfg.vocab_size == 32128
  assert cfg.feed_forward == "gated-gelu" and not cfg.tie_word_embeddings


def test_t5_1_0_is_relu_and_tied():
  for size, shape in {"small": (512, 8, 6, 64, 2048), "base": (768, 12, 12, 64, 3072)}.items():
    cfg = _config(f"t5_1_0/{size}.gin")
    assert _shape(cfg) == shape
    assert cfg.feed_forward == "relu" and cfg.tie_word_embeddings


def test_compact_grid():
  files = sorted(p.name for p in (MODELS / "compact").glob("*.gin"))
  assert len(files) == 24
  for layers in (2, 4, 6, 8, 10, 12):
    for hidden in (128, 256, 512, 768):
      cfg = _config(f"compact/L{layers}_H{hidden}.gin")
      assert _shape(cfg) == (hidden, hidden // 64, layers, 64, 4 * hidden)
      assert cfg.feed_forward == "gated-gelu" and not cfg.tie_word_embeddings


@pytest.mark.parametrize("path", sorted(MODELS.rglob("*.gin")), ids=lambda p: p.stem)
def test_binds_architecture_only_and_states_its_size(path):
  text = path.read_text()
  bound = set(re.findall(r"^T5Config\.(\w+)\s*=", text, re.M))
  assert bound == ARCHITECTURE  # no vocab_size, dropout_rate or dtype
  assert not re.search(r"^(?!T5Config\.|import |#|$)", text, re.M)
  header = re.search(r"^# ([\d,]+) parameters at vocab 32128", text, re.M)
  name = str(path.relative_to(MODELS))
  assert header and int(header.group(1).replace(",", "")) == _param_count(name)
