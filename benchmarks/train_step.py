"""Train-step throughput of recast against transformers' T5ForConditionalGeneration (PyTorch):
same T5.1.1 shapes, batch, lengths and optimizer family (Adafactor, T5X settings), timed
interleaved on the same machine; encoder and decoder tokens/s reported separately.

Both sides do one whole update per call: forward, cross entropy, backward, Adafactor step.
recast runs `trainer.train_state.make_train_step` (what `recast train` runs); Hugging Face
runs eager PyTorch and, where it compiles, `torch.compile`.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Mapping

import numpy as np

from benchmarks import measure
from recast.trainer import flops, network, optimizers, train_state
from recast.trainer.network import T5Config
from recast.trainer.partitioning import Partitioner

LEARNING_RATE = 1e-3  # T5X's fine-tuning constant; both sides use it.
# The CPU benchmark model: a compact T5.1.1 (compact/L4_H256: 4+4 layers, d_model 256,
# 4 heads, d_ff 1024) at T5's pretraining lengths; T5.1.1-small is ~4x the work.
CPU_MODEL = dict(d_model=256, num_heads=4, d_kv=64, d_ff=1024, num_encoder_layers=4,
                 num_decoder_layers=4, dropout_rate=0.0)


def synthetic_batch(*, batch_size: int, task_feature_lengths: Mapping[str, int],
                    vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """An unpacked batch with no padding, as seqio.EncDecFeatureConverter lays it out.

  Returns int32 [batch_size, inputs] encoder_input_tokens and [batch_size, targets]
  decoder_target_tokens (random ids in [2, vocab_size), EOS=1 last),
  decoder_input_tokens (targets shifted right after a 0 BOS), decoder_loss_weights (ones).
  """
  rng = np.random.default_rng(seed)
  inputs_length, targets_length = task_feature_lengths["inputs"], task_feature_lengths["targets"]
  inputs = rng.integers(2, vocab_size, (batch_size, inputs_length), dtype=np.int32)
  targets = rng.integers(2, vocab_size, (batch_size, targets_length), dtype=np.int32)
  inputs[:, -1] = targets[:, -1] = 1
  decoder_inputs = np.concatenate(
      [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets, dtype=np.int32)}


@functools.lru_cache(maxsize=8)
def jitted_step(config: T5Config):
  """(optimizer, partitioner, train_step) per config, so that sections of one run reuse
  compilations of the same shapes."""
  partitioner = Partitioner()
  optimizer = optimizers.create_optimizer(optimizer_def=optimizers.adafactor,
                                          learning_rate_schedule=LEARNING_RATE)
  step = train_state.make_train_step(network.Transformer(config), optimizer, partitioner)
  return optimizer, partitioner, step


class RecastTrainer:
  """recast's jitted train step on the default mesh (every device, data parallel),
  Adafactor at a constant rate."""

  def __init__(self, config: T5Config, *, seed: int = 0, state: Any = None):
    """`state`: start from a copy of this state (of a config with the same shapes) instead
    of initialising one."""
    import jax
    import jax.numpy as jnp
    self.config = config
    optimizer, self.partitioner, self.train_step = jitted_step(config)
    if state is not None:
      self.state = jax.tree_util.tree_map(jnp.copy, state)
    else:
      self.state = train_state.create_train_state(config, optimizer, jax.random.PRNGKey(seed),
                                                  self.partitioner)
    self.rng = jax.device_put(jax.random.PRNGKey(seed + 1), self.partitioner.replicated)

  def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return self.partitioner.shard_batch(batch)

  def step(self, device_batch: Mapping[str, Any]) -> float:
    """One update; blocks until it is done and returns its loss."""
    return self.steps(device_batch, 1)

  def steps(self, device_batch: Mapping[str, Any], count: int) -> float:
    """`count` updates dispatched back to back, as `recast train` runs them (the host
    queues step n+1 while the device runs step n); blocks at the end, returns the last loss."""
    import jax
    for _ in range(count):
      self.state, metrics = self.train_step(self.state, device_batch, self.rng)
    jax.block_until_ready(self.state)
    return float(metrics["loss"])


def hf_config(config: T5Config):
  """The transformers.T5Config with the same shapes (and dropout) as `config`."""
  import transformers
  return transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
      d_ff=config.d_ff, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
      feed_forward_proj=config.feed_forward, tie_word_embeddings=config.tie_word_embeddings,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


class HFTrainer:
  """T5ForConditionalGeneration with transformers' Adafactor in T5X's settings (constant
  rate, parameter scaling, update clipping 1.0, decay exponent 0.8, no momentum).

  `dtype="bfloat16"` trains under torch.autocast (float32 weights, as recast keeps them);
  `compile=True` wraps the model in torch.compile (the optimizer stays eager).
  """

  def __init__(self, config: T5Config, *, device: str = "cpu", dtype: str = "float32",
               compile: bool = False, seed: int = 0):
    import torch
    import transformers
    from transformers.optimization import Adafactor
    torch.manual_seed(seed)
    self.device, self.dtype = torch.device(device), dtype
    model = transformers.T5ForConditionalGeneration(hf_config(config))
    if not config.tie_word_embeddings:
      # transformers 5 always ties lm_head to the embedding when a model is built from a
      # config (only from_pretrained unties differing weights): untie it, with recast's
      # initialisation, or HF would train one vocab x d_model matrix fewer.
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(model.shared.weight) * config.d_model ** -0.5)
      model.all_tied_weights_keys.pop("lm_head.weight", None)
    self.model = model.to(self.device)
    self.model.train()
    self.optimizer = Adafactor(self.model.parameters(), lr=LEARNING_RATE, eps=(1e-30, 1e-3),
                               clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                               weight_decay=0.0, scale_parameter=True, relative_step=False,
                               warmup_init=False)
    self.forward = torch.compile(self.model) if compile else self.model

  def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """recast feature names -> HF arguments; padding (0) is masked, labels -100 there."""
    import torch
    to = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(self.device)
    inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    return {"input_ids": to(inputs), "attention_mask": to(inputs > 0),
            "decoder_input_ids": to(batch["decoder_input_tokens"]),
            "decoder_attention_mask": to(targets > 0),
            "labels": to(np.where(targets > 0, targets, -100))}

  def step(self, device_batch: Mapping[str, Any]) -> float:
    """One update; blocks until it is done and returns its loss."""
    import torch
    with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                        enabled=self.dtype == "bfloat16"):
      loss = self.forward(**device_batch).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    return float(loss.detach())


def _throughput(seconds: list[float], *, batch_size: int, task_feature_lengths: Mapping[str, int],
                flop_count: flops.FlopCount) -> dict[str, float]:
  summary = measure.summarize(seconds)
  per_second = batch_size / summary["median_s"]
  return dict(summary, examples_per_s=per_second,
              encoder_tokens_per_s=per_second * task_feature_lengths["inputs"],
              decoder_tokens_per_s=per_second * task_feature_lengths["targets"],
              model_tflop_per_s=per_second * flop_count.train / 1e12)


def compare_train_step(*, config: T5Config, batch_size: int,
                       task_feature_lengths: Mapping[str, int], repetitions: int = 5,
                       device: str = "cpu", torch_compile: bool = True,
                       log=print) -> dict[str, Any]:
  """Interleaved train-step timings of recast, HF eager and (where it works) HF compiled.

  Args:
    config: the shapes (vocab_size set); `config.dtype` is the activation dtype of both.
    batch_size, task_feature_lengths: one unpacked batch with no padding, reused.
    repetitions: timed steps per system, alternating systems step by step.
    device: "cpu" or "cuda" (the PyTorch device; JAX uses its default backend).
    torch_compile: also time torch.compile (skipped, with the reason, when it fails).
  Returns:
    {"systems": {name: {median_s, examples_per_s, encoder_tokens_per_s,
    decoder_tokens_per_s, model_tflop_per_s, first_step_s} or {"skipped": reason}},
    "ratio_vs_hf_eager", "ratio_vs_hf_compile" (recast tokens/s over theirs), and the setup.
  """
  batch = synthetic_batch(batch_size=batch_size, task_feature_lengths=task_feature_lengths,
                          vocab_size=min(config.vocab_size, 32000))
  flop_count = flops.count_flops(config, feature_lengths=task_feature_lengths)
  systems: dict[str, Any] = {}
  contenders = {}

  def add(name: str, make) -> None:
    start = time.perf_counter()
    try:
      trainer = make()
      device_batch = trainer.device_batch(batch)
      loss = trainer.step(device_batch)  # compiles
    except Exception as e:  # noqa: BLE001  (a system that cannot run is reported, not fatal)
      systems[name] = {"skipped": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
      log(f"  {name}: skipped ({systems[name]['skipped']})")
      return
    systems[name] = {"first_step_s": time.perf_counter() - start, "first_loss": loss}
    contenders[name] = lambda: trainer.step(device_batch)
    log(f"  {name}: ready in {systems[name]['first_step_s']:.1f}s (loss {loss:.3f})")

  add("recast", lambda: RecastTrainer(config))
  add("hf_eager", lambda: HFTrainer(config, device=device, dtype=config.dtype))
  if torch_compile:
    add("hf_compile", lambda: HFTrainer(config, device=device, dtype=config.dtype,
                                        compile=True))
  else:
    systems["hf_compile"] = {"skipped": "not requested (--no_torch_compile)"}
  seconds = measure.interleaved_seconds(contenders, repetitions=repetitions, warmup=1)
  contenders.clear()  # frees both models before the next section (GPU memory above all)
  if device == "cuda":
    import gc

    import torch
    gc.collect()
    torch.cuda.empty_cache()
  for name, times in seconds.items():
    systems[name].update(_throughput(times, batch_size=batch_size,
                                     task_feature_lengths=task_feature_lengths,
                                     flop_count=flop_count))
  result = {"model": config.to_dict(), "params": network.param_count(config),
            "batch_size": batch_size, "task_feature_lengths": dict(task_feature_lengths),
            "device": device, "dtype": config.dtype, "optimizer": "adafactor",
            "train_gflop_per_example": flop_count.train / 1e9, "systems": systems}
  recast_rate = systems.get("recast", {}).get("examples_per_s", float("nan"))
  for other in ("hf_eager", "hf_compile"):
    rate = systems.get(other, {}).get("examples_per_s")
    result[f"ratio_vs_{other}"] = measure.ratio(recast_rate, rate) if rate else None
  return result


def compare_dtypes(*, config: T5Config, batch_size: int, task_feature_lengths: Mapping[str, int],
                   dtypes=("float32", "bfloat16"), repetitions: int = 5,
                   torch_compile: bool = False, log=print) -> dict[str, Any]:
  """`compare_train_step` on the CPU once per activation dtype (HF: float32, or bfloat16
  under torch.autocast), plus recast bfloat16 over recast float32."""
  results = {}
  for dtype in dtypes:
    log(f"train step, CPU ({dtype}):")
    results[dtype] = compare_train_step(
        config=config.replace(dtype=dtype), batch_size=batch_size,
        task_feature_lengths=task_feature_lengths, repetitions=repetitions, device="cpu",
        torch_compile=torch_compile, log=log)
  rates = {d: r["systems"].get("recast", {}).get("examples_per_s") for d, r in results.items()}
  if rates.get("float32") and rates.get("bfloat16"):
    results["recast_bfloat16_over_float32"] = rates["bfloat16"] / rates["float32"]
  return results


def main(argv=None) -> int:
  """`python -m benchmarks.train_step`: recast vs HF eager on this CPU, float32 and bf16."""
  import argparse
  import os
  import sys

  from benchmarks.cpu_bf16 import cpu_description
  from benchmarks.tables import print_train_step
  parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step",
                                   description=main.__doc__)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--lengths", default="512/114", help="inputs/targets")
  parser.add_argument("--repetitions", type=int, default=5)
  parser.add_argument("--vocab_size", type=int, default=32128)
  parser.add_argument("--torch_compile", action="store_true")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  inputs, targets = (int(x) for x in args.lengths.split("/"))
  config = T5Config(**CPU_MODEL).with_vocab_size(args.vocab_size)
  cpu = cpu_description()
  print(f"{cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa'])}); "
        f"load {os.getloadavg()[0]:.1f}")
  results = compare_dtypes(config=config, batch_size=args.batch_size,
                           task_feature_lengths={"inputs": inputs, "targets": targets},
                           dtypes=tuple(args.dtypes.split(",")), repetitions=args.repetitions,
                           torch_compile=args.torch_compile)
  for dtype in args.dtypes.split(","):
    print_train_step(results[dtype])
  if "recast_bfloat16_over_float32" in results:
    print(f"recast bfloat16 / float32: {results['recast_bfloat16_over_float32']:.2f}x")
  print(f"load at the end {os.getloadavg()[0]:.1f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
