"""GPU-only measurements: model FLOPs utilisation of T5.1.1-base at 512/114 in bfloat16
(FLOPs from `trainer.flops`, against the card's dense bf16 datasheet peak), the time from
nothing to the first finished train step, an attention-kernel comparison (cuDNN's fused
attention, the Pallas relative-position kernel of `trainer.attention_kernel` and XLA's
einsums, speed and numerics), a profile of the step, and recast
against Hugging Face on the GPU. On a machine without a GPU every function here returns
{"skipped": reason} instead."""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import numpy as np

from benchmarks import measure, tables, trace_summary, train_step
from benchmarks.train_step import RecastTrainer, synthetic_batch
from recast.trainer import flops
from recast.trainer.network import T5Config

# Dense bf16 datasheet peaks, FLOP/s per chip (H100/H200 SXM: 989 TFLOP/s).
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
T5_1_1_BASE = T5Config(vocab_size=32128, d_model=768, num_heads=12, d_kv=64, d_ff=2048,
                       num_encoder_layers=12, num_decoder_layers=12, dropout_rate=0.0,
                       dtype="bfloat16")
T5_LENGTHS = {"inputs": 512, "targets": 114}


def gpu_skip_reason() -> Optional[str]:
  """None when JAX runs on a GPU, else the line to print instead of GPU numbers."""
  import jax
  backend = jax.default_backend()
  if backend != "gpu":
    return f"no GPU: JAX backend is {backend!r} ({jax.devices()[0].device_kind})"
  return None


def peak_flops(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of a device kind ("NVIDIA H100 80GB HBM3"), None if unknown."""
  for name, peak in BF16_PEAK_FLOPS.items():
    if name in device_kind:
      return peak
  return None


def _background_step(config: T5Config, batch: Mapping[str, np.ndarray],
                     compiler_options: Optional[Mapping[str, Any]] = None):
  """recast's train step for `config`, compiling now in a second thread
  (`train_state.BackgroundCompiledStep`, as `recast train` does)."""
  import jax
  from recast.trainer import train_state
  optimizer, partitioner, step = train_step.jitted_step(config)
  abstract_state = train_state.abstract_train_state(config, optimizer, partitioner)
  abstract_batch = {name: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                               sharding=partitioner.batch_sharding)
                    for name, x in batch.items()}
  abstract_rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=partitioner.replicated)
  return train_state.BackgroundCompiledStep(step, abstract_state, abstract_batch,
                                            abstract_rng, compiler_options=compiler_options)


def _compiled(step):
  """`step` (a BackgroundCompiledStep) once its compilation is done; raises why it failed
  rather than timing a fallback."""
  if not step.compiled:
    raise RuntimeError(f"the train step did not compile: {step.error}")
  return step


def _cold_trainer(config: T5Config, batch: Mapping[str, np.ndarray], log
                  ) -> tuple[RecastTrainer, dict[str, float]]:
  """A trainer from nothing, its train step compiled in a second thread while the
  parameters are initialised (XLA compiles with Python's lock released).

  Returns the trainer (its first update done) and {"init_s", "compile_s",
  "time_to_first_step_s"}: init and compile each from the start, first step = both done
  plus one update.
  """
  import jax
  compiles: list = []  # (program, XLA compile seconds) of every compilation of the start

  def on_duration(event, seconds, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append((str(kwargs.get("fun_name", "?")), seconds))
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  try:
    start = time.perf_counter()
    step = _background_step(config, batch)
    trainer = RecastTrainer(config)
    jax.block_until_ready(trainer.state)
    init_s = time.perf_counter() - start
    trainer.train_step = _compiled(step)
    trainer.step(trainer.device_batch(batch))
    first = time.perf_counter() - start
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
  compile_s = step.compile_seconds
  init_compile_s = sum(s for name, s in compiles if "train_step" not in name)
  log(f"  init {init_s:.1f}s (of it {init_compile_s:.1f}s compiling), step compiled in "
      f"{compile_s:.1f}s (in parallel), first step done after {first:.1f}s")
  log("  compilations: " + ", ".join(f"{name} {s:.1f}s" for name, s in
                                     sorted(compiles, key=lambda c: -c[1])[:6]))
  return trainer, {"init_s": init_s, "init_compile_s": init_compile_s, "compile_s": compile_s,
                   "time_to_first_step_s": first,
                   "compilations": [{"program": n, "compile_s": s} for n, s in compiles]}


def mfu(*, config: T5Config = T5_1_1_BASE, task_feature_lengths: Mapping[str, int] = T5_LENGTHS,
        batch_size: int = 64, repetitions: int = 10, steps_per_timing: int = 5,
        state: Any = None, compiler_options: Optional[Mapping[str, Any]] = None,
        log=print) -> dict[str, Any]:
  """MFU of recast's train step (Adafactor, no padding) and, from nothing, the time to
  the first step.

  Each timing runs `steps_per_timing` updates dispatched back to back (the train loop's
  shape: the host queues the next step while the device runs one) and divides.
  `state`: start from a copy of it (same shapes) instead of from nothing; then no time to
  first step is measured, only the step's compilation (with `compiler_options`, XLA
  options for it).
  MFU = train FLOPs per example x examples/s / (devices x peak).
  Also returns the trainer under "_trainer" (for a profile; not serialisable).
  """
  reason = gpu_skip_reason()
  if reason:
    return {"skipped": reason}
  import jax
  batch = synthetic_batch(batch_size=batch_size, task_feature_lengths=task_feature_lengths,
                          vocab_size=32000)
  if state is None:
    trainer, startup = _cold_trainer(config, batch, log)
    device_batch = trainer.device_batch(batch)
  else:
    start = time.perf_counter()
    trainer = RecastTrainer(config, state=state)
    trainer.train_step = _compiled(_background_step(config, batch, compiler_options))
    device_batch = trainer.device_batch(batch)
    trainer.step(device_batch)
    startup = {"compile_and_first_step_s": time.perf_counter() - start}
    log(f"  step compiled and run in {startup['compile_and_first_step_s']:.1f}s")
  seconds = measure.interleaved_seconds(
      {"recast": lambda: trainer.steps(device_batch, steps_per_timing)},
      repetitions=repetitions, warmup=1)["recast"]
  step_s = float(np.median(seconds)) / steps_per_timing
  flop_count = flops.count_flops(config, feature_lengths=task_feature_lengths)
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  achieved = flop_count.train * batch_size / step_s
  return {"device_kind": kind, "num_devices": jax.device_count(), "model": config.to_dict(),
          "attention": config.attention_implementation, "batch_size": batch_size,
          "compiler_options": dict(compiler_options or {}),
          "task_feature_lengths": dict(task_feature_lengths), **startup,
          "steps_per_timing": steps_per_timing,
          "step_seconds": measure.summarize([s / steps_per_timing for s in seconds]),
          "examples_per_s": batch_size / step_s,
          "train_gflop_per_example": flop_count.train / 1e9,
          "achieved_tflop_per_s": achieved / 1e12,
          "peak_tflop_per_s": peak / 1e12 if peak else None,
          "mfu": achieved / (peak * jax.device_count()) if peak else None,
          "_trainer": (trainer, device_batch)}


def attention_numerics(*, batch_size: int = 8, lengths: Mapping[str, int] = None,
                       seed: int = 0) -> dict[str, Any]:
  """Loss and gradients of a 2+2-layer bf16 T5.1.1 with cuDNN, Pallas and XLA attention,
  each against float32 XLA, on padded rows and on packed rows.

  Returns, per layout: loss of each, and for each bf16 implementation the relative error
  ||g - g_f32|| / ||g_f32|| of the whole gradient and of the relative-position tables.
  """
  reason = gpu_skip_reason()
  if reason:
    return {"skipped": reason}
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from recast.trainer import losses, network
  lengths = lengths or {"inputs": 128, "targets": 32}
  base = T5Config(vocab_size=32128, d_model=512, num_heads=8, d_kv=64, d_ff=1024,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
  params = nn.unbox(network.init_params(base.replace(attention_implementation="xla"),
                                        jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)

  def padded():
    batch = synthetic_batch(batch_size=batch_size, task_feature_lengths=lengths,
                            vocab_size=32000, seed=seed)
    for row in range(batch_size):
      for name, length in (("encoder_input_tokens", lengths["inputs"]),
                           ("decoder_target_tokens", lengths["targets"])):
        keep = int(rng.integers(length // 4, length + 1))
        batch[name][row, keep:] = 0
    targets = batch["decoder_target_tokens"]
    batch["decoder_input_tokens"] = np.where(
        np.concatenate([np.ones((batch_size, 1), bool), targets[:, :-1] > 0], 1),
        batch["decoder_input_tokens"], 0)
    batch["decoder_loss_weights"] = (targets > 0).astype(np.int32)
    return batch

  def packed():  # three examples per row at fixed cut points, then padding
    batch = synthetic_batch(batch_size=batch_size, task_feature_lengths=lengths,
                            vocab_size=32000, seed=seed + 1)
    for name, length in (("encoder", lengths["inputs"]), ("decoder", lengths["targets"])):
      cuts = [0, length // 4, length // 2, length - length // 8]
      seg = np.zeros(length, np.int32)
      for i in range(3):
        seg[cuts[i]:cuts[i + 1]] = i + 1
      batch[f"{name}_segment_ids"] = np.tile(seg, (batch_size, 1))
    for name, seg in (("encoder_input_tokens", "encoder_segment_ids"),
                      ("decoder_target_tokens", "decoder_segment_ids"),
                      ("decoder_input_tokens", "decoder_segment_ids")):
      batch[name] = np.where(batch[seg] > 0, batch[name], 0)
    starts = np.diff(batch["decoder_segment_ids"], axis=1, prepend=0) != 0
    batch["decoder_input_tokens"] = np.where(starts, 0, batch["decoder_input_tokens"])
    batch["decoder_loss_weights"] = (batch["decoder_segment_ids"] > 0).astype(np.int32)
    return batch

  def loss_and_grads(config, batch):
    model = network.Transformer(config)
    inputs = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}

    def loss_fn(p):
      logits = model.apply({"params": p}, **inputs)
      return losses.compute_loss(logits, batch, loss_normalizing_factor=None)[0]
    return jax.jit(jax.value_and_grad(loss_fn))(params)

  def rel(a, b):
    flat = lambda t: jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                                      for x in jax.tree_util.tree_leaves(t)])
    return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))

  results: dict[str, Any] = {"model": base.to_dict(), "batch_size": batch_size,
                             "task_feature_lengths": dict(lengths)}
  for layout, make in (("padded", padded), ("packed", packed)):
    batch = {k: jnp.asarray(v) for k, v in make().items()}
    ref_loss, ref = loss_and_grads(base.replace(attention_implementation="xla"), batch)
    row: dict[str, Any] = {"loss_float32": float(ref_loss)}
    for implementation in ("xla", "cudnn", "pallas"):
      try:
        loss, grads = loss_and_grads(base.replace(dtype="bfloat16",
                                                  attention_implementation=implementation),
                                     batch)
      except Exception as e:  # noqa: BLE001
        row[implementation] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
        continue
      row[implementation] = {
          "loss": float(loss), "grad_rel_error": rel(grads, ref),
          "relpos_grad_rel_error": rel(
              [grads["encoder"]["relpos_bias"], grads["decoder"]["relpos_bias"]],
              [ref["encoder"]["relpos_bias"], ref["decoder"]["relpos_bias"]])}
    results[layout] = row
  return results


def attention_op(*, batch_size: int = 128, length: int = 512, num_heads: int = 12,
                 d_kv: int = 64, implementations=("xla", "cudnn", "pallas"),
                 repetitions: int = 5, seed: int = 0) -> dict[str, Any]:
  """One T5.1.1-base encoder self-attention alone (bf16, relative-position bias, padded
  rows), forward + backward (gradients of query, key, value and the bias table), per
  kernel: median ms, and each gradient's relative difference from XLA's."""
  reason = gpu_skip_reason()
  if reason:
    return {"skipped": reason}
  import jax
  import jax.numpy as jnp
  from recast.trainer import attention_kernel, network
  rng = np.random.default_rng(seed)
  shape = (batch_size, length, num_heads, d_kv)
  q, k, v, cotangent = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for _ in range(4))
  table = jnp.asarray(rng.normal(size=(num_heads, 32)), jnp.float32)
  positions = jnp.arange(length)
  buckets = network.relative_position_bucket(positions[None, :] - positions[:, None],
                                             bidirectional=True, num_buckets=32,
                                             max_distance=128)
  real = positions[None, :] < jnp.asarray(rng.integers(length // 2, length + 1,
                                                       batch_size))[:, None]
  mask = network.AttentionMask(real, real)

  def attend(implementation, q, k, v, table):
    if implementation == "pallas":
      return attention_kernel.relative_attention(q, k, v, table, buckets, query_mask=real,
                                                 key_mask=real)
    bias = jnp.take(table, buckets, axis=1)[None]
    if implementation == "cudnn":
      return network.fused_attention(q, k, v, mask, bias)
    logits = jnp.einsum("bqhk,bthk->bhqt", q, k).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits + mask.bias(), axis=-1).astype(q.dtype)
    return jnp.einsum("bhqt,bthk->bqhk", weights, v)

  steps, grads = {}, {}
  results: dict[str, Any] = {"batch_size": batch_size, "length": length,
                             "num_heads": num_heads, "d_kv": d_kv}
  for name in implementations:
    loss = lambda q, k, v, t, name=name: jnp.sum(
        attend(name, q, k, v, t).astype(jnp.float32) * cotangent.astype(jnp.float32))
    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    try:
      grads[name] = jax.block_until_ready(step(q, k, v, table))
    except Exception as e:  # noqa: BLE001  (a kernel that can't compile here is a result)
      results[name] = {"skipped": f"{type(e).__name__}: {str(e)[:300]}"}
      continue
    steps[name] = lambda step=step: jax.block_until_ready(step(q, k, v, table))
  seconds = measure.interleaved_seconds(steps, repetitions=repetitions, warmup=1)

  def rel(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  for name, times in seconds.items():
    results[name] = {"fwd_bwd_ms": float(np.median(times)) * 1e3}
    if "xla" in grads and name != "xla":
      results[name].update({f"d{arg}_rel_diff_vs_xla": rel(g, want) for arg, g, want in
                            zip(("q", "k", "v", "table"), grads[name], grads["xla"])})
  return results


def profile(trainer: RecastTrainer, device_batch, out_dir: str, *, steps: int = 3
            ) -> dict[str, Any]:
  """A JAX profiler trace of `steps` updates in `out_dir` and its per-kernel summary."""
  import glob
  import os

  import jax
  trainer.steps(device_batch, 1)
  jax.profiler.start_trace(out_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  trainer.steps(device_batch, steps)
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(out_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))
  if not traces:
    return {"skipped": f"no perfetto_trace.json.gz under {out_dir}"}
  summary = trace_summary.summarize(traces[-1], steps=steps)
  return dict(summary, trace=traces[-1], steps=steps, wall_s=wall)


def main(argv=None) -> int:
  """`python -m benchmarks.gpu`: the GPU sections alone, with no input pipeline, so no
  TensorFlow or seqio: it runs on an accelerator image that has only
  jax/flax/optax/torch/transformers (+gin). Sections run in order while the time budget
  lasts: cold start + MFU per attention kernel and batch size, a profile, attention
  numerics, recast against Hugging Face."""
  import argparse
  import json
  import os
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=main.__doc__)
  parser.add_argument("--attention", default="cudnn,xla,pallas",
                      help="attention kernels to time (T5Config.attention_implementation); "
                      "the first one starts cold (time to first step) and is profiled")
  parser.add_argument("--batch_sizes", default="128,256",
                      help="T5.1.1-base 512/114 batch sizes for MFU: every kernel of --attention "
                      "at the first size, then the first kernel at the others")
  parser.add_argument("--compiler_options", default="[]",
                      help="JSON list of XLA option dicts, each timed as a variant of the "
                      "first kernel at the first batch size, e.g. "
                      "'[{\"xla_gpu_enable_triton_gemm\": false}]'")
  parser.add_argument("--step_batch", type=int, default=32,
                      help="batch of the recast vs Hugging Face comparison; 0 skips it")
  parser.add_argument("--repetitions", type=int, default=5)
  parser.add_argument("--steps_per_timing", type=int, default=5)
  parser.add_argument("--profile_dir", default=None, help="write a profiler trace here")
  parser.add_argument("--numerics", action="store_true",
                      help="compare cuDNN, Pallas and XLA attention gradients with float32")
  parser.add_argument("--attention_op", action="store_true",
                      help="time one encoder self-attention alone per kernel (forward + "
                      "backward, T5.1.1-base heads at --batch_sizes' first size x 512)")
  parser.add_argument("--no_torch_compile", action="store_true")
  parser.add_argument("--time_budget_s", type=float, default=float("inf"),
                      help="start no section after this many seconds")
  parser.add_argument("--out", default=None, help="JSON path for every number")
  args = parser.parse_args(argv)
  clock = time.perf_counter()
  import jax
  backend_start = time.perf_counter()
  reason = gpu_skip_reason()
  if reason:
    print(f"gpu: skipped ({reason})")
    return 0
  results: dict[str, Any] = {
      "jax": jax.__version__, "devices": [d.device_kind for d in jax.devices()],
      "backend_init_s": time.perf_counter() - backend_start,
      "platform_version": getattr(getattr(jax.devices()[0], "client", None),
                                  "platform_version", None),
      "kernel": os.uname().release, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "mfu": []}
  print(f"{results['devices'][0]}, jax {jax.__version__}, kernel {results['kernel']}, "
        f"backend up in {results['backend_init_s']:.1f}s", flush=True)

  def save():
    if args.out:
      from recast import atomic_files
      atomic_files.write_json(args.out, results)

  def in_budget(section: str) -> bool:
    elapsed = time.perf_counter() - clock
    if elapsed > args.time_budget_s:
      print(f"{section}: skipped (time budget: {elapsed:.0f}s of {args.time_budget_s:.0f}s "
            "spent)", flush=True)
      return False
    return True

  def numerics():
    results["numerics"] = attention_numerics()
    print("numerics:", json.dumps(results["numerics"]), flush=True)
    save()

  attentions = [a for a in args.attention.split(",") if a]
  batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  options = json.loads(args.compiler_options)
  runs = ([(a, batch_sizes[0], {}) for a in attentions]
          + [(attentions[0], batch_sizes[0], o) for o in options]
          + [(attentions[0], b, {}) for b in batch_sizes[1:]])
  state, profiled = None, False
  for index, (attention, batch_size, opts) in enumerate(runs):
    if index == len(attentions) and args.numerics and in_budget("numerics"):
      numerics()  # before the other variants: it decides whether cuDNN's numbers hold
    if not in_budget(f"mfu {attention} batch {batch_size} {opts}"):
      break
    print(f"mfu: attention {attention}, batch {batch_size}, options {opts}", flush=True)
    try:
      r = mfu(config=T5_1_1_BASE.replace(attention_implementation=attention),
              task_feature_lengths=T5_LENGTHS, batch_size=batch_size,
              repetitions=args.repetitions, steps_per_timing=args.steps_per_timing,
              state=state, compiler_options=opts)
    except Exception as e:  # noqa: BLE001  (out of memory at a large batch is a result)
      r = {"batch_size": batch_size, "attention": attention, "compiler_options": opts,
           "skipped": f"{type(e).__name__}: {str(e)[:300]}"}
    trainer_and_batch = r.pop("_trainer", None)
    if (trainer_and_batch and args.profile_dir and not profiled
        and in_budget("profile")):
      profiled = True
      try:
        results["profile"] = profile(*trainer_and_batch, args.profile_dir)
      except Exception as e:  # noqa: BLE001
        results["profile"] = {"skipped": f"{type(e).__name__}: {str(e)[:300]}"}
      summary = results["profile"]
      print("profile:", summary.get("skipped") or "\n".join(
          [summary["trace"]] + trace_summary.format_summary(summary, top=25)),
          flush=True)
    if trainer_and_batch and state is None:  # later runs start from it (no second init)
      state = trainer_and_batch[0].state
    del trainer_and_batch
    results["mfu"].append(r)
    save()
    tables.print_gpu(r)
  state = None
  if args.numerics and "numerics" not in results and in_budget("numerics"):
    numerics()
  if args.attention_op and in_budget("attention_op"):
    results["attention_op"] = attention_op(batch_size=batch_sizes[0],
                                           repetitions=args.repetitions)
    save()
    print("attention_op (fwd+bwd ms):", json.dumps(results["attention_op"]), flush=True)
  if args.step_batch and in_budget("train_step"):
    results["train_step"] = train_step.compare_train_step(
        config=T5_1_1_BASE, batch_size=args.step_batch, task_feature_lengths=T5_LENGTHS,
        repetitions=args.repetitions, device="cuda",
        torch_compile=not args.no_torch_compile)
    save()
    tables.print_train_step(results["train_step"])
  measured = [r["mfu"] or 0 for r in results["mfu"] if "skipped" not in r]
  print(json.dumps({"best_mfu": max(measured, default=None)}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
