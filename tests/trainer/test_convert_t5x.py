"""T5X <-> recast conversion on checkpoints written here in T5X's layouts (t5x/checkpoints.py):

- msgpack: checkpoint_N/checkpoint = flax msgpack of {"version": 3, "optimizer": {"target",
  "state": {"step", "param_states"}}}, partitioned arrays as tensorstore zarr folders named
  by their path ("target.encoder.layers_0.attention.query.kernel") and referenced from the
  msgpack by their spec's JSON, the rest inline;
- orbax: checkpoint_N/state, an OCDBT PyTree of the same state dict.

The T5X weights are a Hugging Face T5's in T5X's names and shapes (DenseGeneral kernels
[in, out], attention flattened to [d, heads*d_kv]), so transformers gives the logits the
imported recast model must reproduce.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import seqio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import orbax.checkpoint as ocp  # noqa: E402
import tensorstore as ts  # noqa: E402
from flax import serialization  # noqa: E402

from recast import cli  # noqa: E402
from recast.trainer import checkpoints, convert, network  # noqa: E402

VOCAB = 128  # >= seqio's toy spiece.model: 26 pieces + 100 extra ids
SPIECE = Path(seqio.__file__).parent / "test_data/sentencepiece/sentencepiece.model"
INPUTS = np.array([[5, 9, 13, 7, 22, 3, 1], [8, 31, 4, 1, 0, 0, 0]], np.int32)
TARGETS = np.array([[11, 6, 42, 17, 1], [25, 1, 0, 0, 0]], np.int32)
DECODER_INPUTS = np.concatenate([np.zeros((2, 1), np.int32), TARGETS[:, :-1]], axis=1)
_T5X_SUBLAYERS = {"encoder": ["attention", "mlp"],
                  "decoder": ["self_attention", "encoder_decoder_attention", "mlp"]}
_NORMS = {"encoder": ["pre_attention_layer_norm", "pre_mlp_layer_norm"],
          "decoder": ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
                      "pre_mlp_layer_norm"]}


def _hf_model(variant):
  torch.manual_seed(3)
  gated = variant == "t5_1_1"
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1,
      num_heads=3, feed_forward_proj="gated-gelu" if gated else "relu",
      tie_word_embeddings=not gated, dropout_rate=0.0, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    if gated:
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 16))
    for name, p in model.named_parameters():
      if "relative_attention_bias" in name or "layer_norm" in name:
        p.add_(torch.rand_like(p))
  return model.eval()


def t5x_target(model) -> dict[str, np.ndarray]:
  """{"encoder/layers_0/attention/query/kernel": array, ...}: T5X's tree of a HF T5
  (t5x/examples/t5/network.py names; a torch Linear weight [out, in] is T5X's kernel
  [in, out], which for attention is DenseGeneral's flattened [d, heads*d_kv])."""
  w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  target = {"token_embedder/embedding": w["shared.weight"]}
  for stack in ("encoder", "decoder"):
    target[f"{stack}/relpos_bias/rel_embedding"] = w[
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T
    target[f"{stack}/{stack}_norm/scale"] = w[f"{stack}.final_layer_norm.weight"]
    layers = model.config.num_layers if stack == "encoder" else model.config.num_decoder_layers
    for i in range(layers):
      for j, (sub, norm) in enumerate(zip(_T5X_SUBLAYERS[stack], _NORMS[stack])):
        hf = f"{stack}.block.{i}.layer.{j}"
        target[f"{stack}/layers_{i}/{norm}/scale"] = w[f"{hf}.layer_norm.weight"]
        if sub == "mlp":
          for leaf in ("wi", "wi_0", "wi_1", "wo"):
            if f"{hf}.DenseReluDense.{leaf}.weight" in w:
              target[f"{stack}/layers_{i}/mlp/{leaf}/kernel"] = w[
                  f"{hf}.DenseReluDense.{leaf}.weight"].T
        else:
          torch_name = "SelfAttention" if j == 0 else "EncDecAttention"
          for leaf, short in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            target[f"{stack}/layers_{i}/{sub}/{leaf}/kernel"] = w[
                f"{hf}.{torch_name}.{short}.weight"].T
  if not model.config.scale_decoder_outputs:  # untied: its own output layer
    target["decoder/logits_dense/kernel"] = w["lm_head.weight"].T
  return target


def adafactor_states(target) -> dict[str, np.ndarray]:
  """T5X Adafactor's per-parameter state (v_row, v_col, v, m), as checkpoints hold it."""
  states = {}
  for name, value in target.items():
    for slot, shape in (("m", (1,)), ("v", value.shape), ("v_col", (1,)), ("v_row", (1,))):
      states[f"{name}/{slot}"] = np.full(shape, 0.25, np.float32)
  return states


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def write_t5x_msgpack(folder: Path, target, *, step: int, inline=("scale",)) -> Path:
  """T5X's Checkpointer layout: arrays as tensorstore zarr (gzip), specs with relative
  paths in the msgpack; leaves named in `inline` (unpartitioned in T5X) in the msgpack."""
  folder.mkdir(parents=True)
  state = {f"target/{k}": v for k, v in target.items()}
  state.update({f"state/param_states/{k}": v for k, v in adafactor_states(target).items()})
  written = {}
  for name, value in state.items():
    if name.startswith("target/") and name.split("/")[-1] in inline:
      written[name] = value
      continue
    spec = {"driver": "zarr", "dtype": "float32",
            "kvstore": {"driver": "file", "path": name.replace("/", ".")},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                         "chunks": [max(1, value.shape[0] // 2), *value.shape[1:]]}}
    absolute = json.loads(json.dumps(spec))
    absolute["kvstore"]["path"] = str(folder / spec["kvstore"]["path"])
    ts.open(absolute, create=True, open=True).result().write(value).result()
    written[name] = ts.Spec(spec).to_json()
  written["state/step"] = np.int32(step)
  (folder / "checkpoint").write_bytes(serialization.msgpack_serialize(
      {"version": 3, "optimizer": _nest(written)}))
  return folder


def write_t5x_orbax(model_dir: Path, target, *, step: int) -> Path:
  """T5X's OrbaxCheckpointManagerInterface layout: checkpoint_N/state (OCDBT PyTree)."""
  state = {"target": _nest(target), "state": {
      "step": np.int32(step), "param_states": _nest(adafactor_states(target))}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True,
                                         enable_async_checkpointing=False)
  with ocp.CheckpointManager(model_dir, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)}) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
  return model_dir / f"checkpoint_{step}"


def read_t5x_msgpack_target(folder: Path) -> dict[str, np.ndarray]:
  """The `target` arrays of a msgpack + tensorstore checkpoint, read as T5X reads them."""
  contents = serialization.msgpack_restore((folder / "checkpoint").read_bytes())
  assert set(contents) == {"version", "optimizer"} and contents["version"] == 3
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict) and not {"driver", "kvstore", "metadata"} <= node.keys():
      for key, value in node.items():
        walk(value, f"{prefix}/{key}" if prefix else key)
    elif isinstance(node, dict):
      assert not Path(node["kvstore"]["path"]).is_absolute()  # portable: relative paths
      spec = json.loads(json.dumps(node))
      spec["kvstore"]["path"] = str(folder / spec["kvstore"]["path"])
      out[prefix] = ts.open(spec, open=True).result().read().result()
    else:
      out[prefix] = np.asarray(node)
  walk(contents["optimizer"]["target"], "")
  return out


def _logits(model_or_config, params=None):
  if params is not None:
    return np.asarray(network.Transformer(model_or_config).apply(
        {"params": params}, INPUTS, DECODER_INPUTS, TARGETS))
  with torch.no_grad():
    return model_or_config(input_ids=torch.tensor(INPUTS, dtype=torch.long),
                           attention_mask=torch.tensor(INPUTS != 0),
                           decoder_input_ids=torch.tensor(DECODER_INPUTS, dtype=torch.long)
                           ).logits.numpy()


@pytest.fixture(scope="module", params=["t5_1_0", "t5_1_1"])
def t5x(request, tmp_path_factory):
  """(HF model, its T5X target, a msgpack model dir with checkpoint_7 and checkpoint_12,
  an orbax model dir with checkpoint_12)."""
  model = _hf_model(request.param)
  target = t5x_target(model)
  root = tmp_path_factory.mktemp(f"t5x_{request.param}")
  older = {k: v * 0 for k, v in target.items()}
  write_t5x_msgpack(root / "msgpack" / "checkpoint_7", older, step=7)
  write_t5x_msgpack(root / "msgpack" / "checkpoint_12", target, step=12)
  write_t5x_orbax(root / "orbax", target, step=12)
  return request.param, model, target, root / "msgpack", root / "orbax"


def _leaves(params):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}


def test_msgpack_import_gives_transformers_logits(t5x, tmp_path):
  variant, model, _, msgpack_dir, _ = t5x
  dst = convert.t5x_to_recast(msgpack_dir, tmp_path / "ckpt")  # the model dir: its newest
  meta = checkpoints.read_metadata(dst)
  assert meta["step"] == 12
  config = checkpoints.load_config(dst)
  assert (config.vocab_size, config.d_model, config.num_heads, config.d_kv, config.d_ff) == (
      VOCAB, 16, 3, 4, 24)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 1)
  assert (config.feed_forward, config.tie_word_embeddings) == (
      ("gated-gelu", False) if variant == "t5_1_1" else ("relu", True))
  ours = _logits(config, checkpoints.load_params(dst))
  theirs = _logits(model)
  real = TARGETS > 0
  assert np.abs(theirs).max() > 1.0
  np.testing.assert_array_less(np.abs(ours - theirs)[real], 1e-4)


def test_orbax_import_equals_msgpack_import(t5x, tmp_path):
  _, _, _, msgpack_dir, orbax_dir = t5x
  a = convert.t5x_to_recast(msgpack_dir / "checkpoint_12", tmp_path / "a")
  b = convert.t5x_to_recast(orbax_dir, tmp_path / "b")
  assert checkpoints.read_metadata(b)["step"] == 12
  assert checkpoints.load_config(a) == checkpoints.load_config(b)
  pa, pb = _leaves(checkpoints.load_params(a)), _leaves(checkpoints.load_params(b))
  assert sorted(pa) == sorted(pb)
  for name in pa:
    assert pa[name].dtype == pb[name].dtype and pa[name].tobytes() == pb[name].tobytes(), name


@pytest.mark.parametrize("layout", ["msgpack", "orbax"])
def test_round_trips_are_bit_identical(t5x, layout, tmp_path):
  _, _, target, msgpack_dir, _ = t5x
  imported = convert.t5x_to_recast(msgpack_dir / "checkpoint_12", tmp_path / "r")
  written = convert.recast_to_t5x(imported, tmp_path / "t5x", layout=layout)
  assert written == tmp_path / "t5x" / "checkpoint_12"
  if layout == "msgpack":
    again = read_t5x_msgpack_target(written)
  else:
    restored = ocp.PyTreeCheckpointer().restore((written / "state").resolve())
    assert int(restored["state"]["step"]) == 12
    again = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v) for p, v in
             jax.tree_util.tree_leaves_with_path(restored["target"])}
  assert sorted(again) == sorted(target)  # T5X's names, `kernel` included
  for name, value in target.items():  # T5X -> recast -> T5X
    assert again[name].shape == value.shape and again[name].tobytes() == value.tobytes(), name
  back = convert.t5x_to_recast(tmp_path / "t5x", tmp_path / "r2")  # recast -> T5X -> recast
  assert checkpoints.load_config(back) == checkpoints.load_config(imported)
  pa, pb = _leaves(checkpoints.load_params(imported)), _leaves(checkpoints.load_params(back))
  assert sorted(pa) == sorted(pb) and all(pa[k].tobytes() == pb[k].tobytes() for k in pa)


def test_cli_and_bad_input(t5x, tmp_path, capsys, monkeypatch):
  _, _, target, msgpack_dir, _ = t5x
  monkeypatch.chdir(tmp_path)  # relative paths, as typed
  assert cli.main(["convert", "t5x-to-recast", str(msgpack_dir), "r",
                   "--vocabulary", str(SPIECE)]) == 0
  assert checkpoints.read_metadata(tmp_path / "r")["vocabulary"]["size"] == 126
  assert cli.main(["convert", "recast-to-t5x", "r", "o", "--t5x_layout", "orbax"]) == 0
  assert (tmp_path / "o" / "checkpoint_12" / "state" / "_METADATA").is_file()
  assert (tmp_path / "o" / "spiece.model").read_bytes() == SPIECE.read_bytes()
  convert.t5x_to_recast(tmp_path / "o", tmp_path / "r3")  # finds the model dir's spiece.model
  assert (tmp_path / "r3" / "spiece.model").read_bytes() == SPIECE.read_bytes()
  capsys.readouterr()

  def fails(argv, match):
    assert cli.main(["convert", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

  (tmp_path / "empty").mkdir()
  fails(["t5x-to-recast", str(tmp_path / "empty"), str(tmp_path / "x")],
        "is not a T5X checkpoint: it has no `checkpoint` msgpack file")
  fails(["t5x-to-recast", str(tmp_path / "r"), str(tmp_path / "x")],
        "is a recast checkpoint, not a T5X one")
  fails(["recast-to-hf", str(msgpack_dir), str(tmp_path / "x")],
        "is a T5X checkpoint, not a recast one; convert it with `recast convert t5x-to-recast")
  partial = {k: v for k, v in target.items() if "layers_1/mlp/wo" not in k}
  write_t5x_msgpack(tmp_path / "partial" / "checkpoint_1", partial, step=1)
  fails(["t5x-to-recast", str(tmp_path / "partial"), str(tmp_path / "x")],
        "its target has no encoder/layers_1/mlp/wo")
  gated = write_t5x_msgpack(tmp_path / "silu" / "checkpoint_3", target, step=3).parent
  (gated / "config.gin").write_text("network.T5Config:\n  mlp_activations = ('silu', 'linear')\n")
  fails(["t5x-to-recast", str(gated), str(tmp_path / "x")],
        "mlp_activations = ('silu', 'linear'), but recast's T5 has")
  fails(["t5x-to-recast", str(msgpack_dir), str(tmp_path / "x"), "--vocabulary",
         str(tmp_path / "nope.model")], "nope.model does not exist")
  fails(["t5x-to-recast", str(msgpack_dir), str(tmp_path / "r")], "already exists")
  assert not (tmp_path / "x").exists()
