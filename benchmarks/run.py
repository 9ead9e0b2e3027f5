"""`python -m benchmarks.run` (`make bench`): every benchmark of issue 8 in one run; prints
tables and writes one JSON file (benchmarks/results/<date>T<time>.json, not committed).

  python -m benchmarks.run                          # all sections, CPU preset (~30 min, 2 cores)
  python -m benchmarks.run --sections=packing       # one section
  python -m benchmarks.run --preset=smoke --vocabulary=byte   # toy sizes, seconds

Sections: train_step (recast vs HF T5 train step, interleaved), useful_tokens (packed vs
padded to the longest, real GLUE mixture), input_pipeline (span corruption 512/114 and the
packed GLUE mixture vs the step's consumption, input wait in a real loop), packing
(non-padding fractions), gpu (MFU of T5.1.1-base, time to first step; skipped on CPU),
init_compile (flax's init vs grouped draws), optimizer_kernels (Adafactor per tensor vs
stacked, kernels of the compiled update), cpu_bf16 (XLA:CPU bf16 matmuls vs PyTorch).
"""

from __future__ import annotations

import argparse
import os
import dataclasses
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from benchmarks import train_step
from benchmarks.tables import (lengths_text, print_gpu, print_input_pipeline, print_packing,
                               print_train_step, print_useful_tokens)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
SECTIONS = ("train_step", "useful_tokens", "input_pipeline", "packing", "gpu", "init_compile",
            "optimizer_kernels", "cpu_bf16")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Sizes of one benchmark run. Models are T5.1.1 shapes given as T5Config fields."""

  model: dict
  step_batch: int
  step_lengths: dict
  step_repetitions: int
  useful_lengths: dict
  useful_rows: int
  useful_batches: int
  useful_repetitions: int
  pipeline_batch: int
  pipeline_batches: int
  pipeline_steps: int
  pipeline_streams: tuple  # ("span_corruption", "finetune"): which streams to measure
  span_lengths: dict
  finetune_lengths: dict
  packing: tuple  # ((mixture or task, {"inputs": Li, "targets": Lt}), ...)
  packing_batches: int
  gpu_batch: int  # T5.1.1-base 512/114 rows for the MFU measurement
  gpu_step_batch: int = 32  # rows for recast vs HF on the GPU (two models share its memory)
  torch_compile: bool = True
  init_model: str = "base"  # init_compile and optimizer_kernels: T5.1.1-base or tiny
  bf16_matmul_size: int = 2048  # cpu_bf16: the square matmul


# CPU: a compact T5.1.1 (compact/L4_H256: 4+4 layers, d_model 256, 4 heads, d_ff 1024) at
# T5's pretraining lengths; T5.1.1-small is ~4x the work and leaves too few steps.
CPU_MODEL = train_step.CPU_MODEL
PRESETS = {
    "cpu": Preset(
        model=CPU_MODEL, step_batch=8, step_lengths={"inputs": 512, "targets": 114},
        step_repetitions=5, useful_lengths={"inputs": 512, "targets": 64}, useful_rows=8,
        useful_batches=3, useful_repetitions=2, pipeline_batch=8, pipeline_batches=200,
        pipeline_steps=8, pipeline_streams=("span_corruption", "finetune"),
        span_lengths={"inputs": 512, "targets": 114},
        finetune_lengths={"inputs": 512, "targets": 64},
        packing=(("bench_glue4", {"inputs": 512, "targets": 128}),
                 ("bench_glue4", {"inputs": 512, "targets": 64}),
                 ("bench_glue4", {"inputs": 512, "targets": 48}),
                 ("bench_glue4", {"inputs": 256, "targets": 32}),
                 ("glue_rte", {"inputs": 512, "targets": 64}),
                 ("glue_sst2", {"inputs": 512, "targets": 64})), packing_batches=10,
        gpu_batch=64),
    "smoke": Preset(
        model=dict(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                   num_decoder_layers=1, dropout_rate=0.0),
        step_batch=4, step_lengths={"inputs": 64, "targets": 16}, step_repetitions=2,
        useful_lengths={"inputs": 64, "targets": 16}, useful_rows=4, useful_batches=1,
        useful_repetitions=1, pipeline_batch=4, pipeline_batches=2, pipeline_steps=2,
        pipeline_streams=("span_corruption",), span_lengths={"inputs": 64, "targets": 16},
        finetune_lengths={"inputs": 64, "targets": 16},
        packing=(("bench_glue4", {"inputs": 64, "targets": 16}),),
        packing_batches=2, gpu_batch=8, torch_compile=False, init_model="tiny",
        bf16_matmul_size=256),
}


def environment(argv: Sequence[str]) -> dict[str, Any]:
  """Machine, library versions, command and commit of this run."""
  import importlib.metadata as md

  import jax
  import torch
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "seqio", "tensorflow-cpu", "torch",
               "transformers", "sentencepiece"):
    try:
      versions[name] = md.version(name)
    except md.PackageNotFoundError:
      versions[name] = None
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    commit = ""
  return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": "python -m benchmarks.run " + " ".join(argv), "commit": commit,
          "python": platform.python_version(), "platform": platform.platform(),
          "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "jax_backend": jax.default_backend(),
          "jax_devices": [d.device_kind for d in jax.devices()],
          "cuda": torch.cuda.is_available(), "load_average": os.getloadavg(),
          "versions": versions}


def run_benchmarks(*, preset: Preset, sections: Sequence[str], vocabulary_name: str,
                   data_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs `sections` at `preset` sizes; returns {section: results} (printed as it goes)."""
  from benchmarks import gpu, input_pipeline, packing, train_step, vocabulary
  from recast.tasks import vocabularies
  from recast.trainer.network import T5Config

  vocab = vocabulary.benchmark_vocabulary(vocabulary_name, data_dir=data_dir)
  config = T5Config(**preset.model).with_vocab_size(vocab.vocab_size)
  results: dict[str, Any] = {"vocabulary": vocabularies.describe(vocab)}
  with vocabularies.use_vocabulary(vocab):
    glue4 = packing.register_glue4_mixture()
    if "train_step" in sections:
      log("train step, CPU (float32):")
      results["train_step"] = {"cpu": train_step.compare_train_step(
          config=config, batch_size=preset.step_batch,
          task_feature_lengths=preset.step_lengths, repetitions=preset.step_repetitions,
          device="cpu", torch_compile=preset.torch_compile, log=log)}
      print_train_step(results["train_step"]["cpu"])
      log("train step, CPU (bfloat16 activations; HF under torch.autocast):")
      results["train_step"]["cpu_bfloat16"] = train_step.compare_train_step(
          config=config.replace(dtype="bfloat16"), batch_size=preset.step_batch,
          task_feature_lengths=preset.step_lengths, repetitions=preset.step_repetitions,
          device="cpu", torch_compile=preset.torch_compile, log=log)
      print_train_step(results["train_step"]["cpu_bfloat16"])
      reason = gpu.gpu_skip_reason()
      if reason is None:
        log("train step, GPU (bfloat16):")
        results["train_step"]["gpu"] = train_step.compare_train_step(
            config=gpu.T5_1_1_BASE, batch_size=preset.gpu_step_batch,
            task_feature_lengths=gpu.T5_LENGTHS, repetitions=10, device="cuda",
            torch_compile=True, log=log)
        print_train_step(results["train_step"]["gpu"])
      else:
        results["train_step"]["gpu"] = {"skipped": reason}
        print(f"train step, GPU: skipped ({reason})")
    if "useful_tokens" in sections:
      log("useful tokens:")
      results["useful_tokens"] = packing.useful_token_throughput(
          config=config, mixture_or_task_name=glue4, task_feature_lengths=preset.useful_lengths,
          batch_size=preset.useful_rows, num_batches=preset.useful_batches,
          repetitions=preset.useful_repetitions, log=log)
      print_useful_tokens(results["useful_tokens"])
    if "input_pipeline" in sections:
      streams = {"span_corruption": ("wikipedia_en_span_corruption", preset.span_lengths),
                 "finetune": (glue4, preset.finetune_lengths)}
      results["input_pipeline"] = {}
      for name, lengths in (streams[s] for s in preset.pipeline_streams):
        log(f"input pipeline: {name}")
        results["input_pipeline"][name] = input_pipeline.input_pipeline_report(
            config=config, mixture_or_task_name=name, task_feature_lengths=lengths,
            batch_size=preset.pipeline_batch, num_batches=preset.pipeline_batches,
            num_steps=preset.pipeline_steps, log=log)
      print_input_pipeline(results["input_pipeline"])
    if "packing" in sections:
      results["packing"] = []
      for name, lengths in preset.packing:
        log(f"packing: {name} {lengths_text(lengths)}")
        results["packing"].append(packing.packing_efficiency(
            mixture_or_task_name=name, task_feature_lengths=lengths,
            num_batches=preset.packing_batches))
      print_packing(results["packing"])
    if "gpu" in sections:
      results["gpu"] = gpu.mfu(batch_size=preset.gpu_batch, log=log)
      results["gpu"].pop("_trainer", None)
      print_gpu(results["gpu"])
    if "init_compile" in sections:
      from benchmarks import init_compile
      log("parameter init compile time:")
      results["init_compile"] = init_compile.init_compile(model=preset.init_model, rounds=1,
                                                          log=log)
      init_compile.print_init_compile(results["init_compile"])
    if "optimizer_kernels" in sections:
      from benchmarks import optimizer_kernels
      log("Adafactor kernels:")
      results["optimizer_kernels"] = optimizer_kernels.optimizer_kernels(
          model=preset.init_model, repetitions=3, log=log)
      optimizer_kernels.print_optimizer_kernels(results["optimizer_kernels"])
    if "cpu_bf16" in sections:
      from benchmarks import cpu_bf16
      log("XLA:CPU bf16 matmuls:")
      results["cpu_bf16"] = cpu_bf16.cpu_bf16(size=preset.bf16_matmul_size, log=log)
      cpu_bf16.print_cpu_bf16(results["cpu_bf16"])
  return results


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {', '.join(SECTIONS)}")
  parser.add_argument("--vocabulary", default="wikipedia32k",
                      help="wikipedia32k (trained once, cached), byte, or a .model path")
  parser.add_argument("--data_dir", default=os.environ.get("RECAST_DATA_DIR",
                                                          str(DEFAULT_DATA_DIR)))
  parser.add_argument("--no_torch_compile", action="store_true",
                      help="skip torch.compile in the train-step comparison")
  parser.add_argument("--out", default=None,
                      help="JSON path (default benchmarks/results/<date>T<time>.json)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
          file=sys.stderr)
    return 2
  if not os.path.isdir(os.path.join(args.data_dir, "glue")):
    print(f"no GLUE data under {args.data_dir}; pass --data_dir (../shared/data)",
          file=sys.stderr)
    return 2
  os.environ["RECAST_DATA_DIR"] = args.data_dir
  preset = PRESETS[args.preset]
  if args.no_torch_compile:
    preset = dataclasses.replace(preset, torch_compile=False)
  start = time.perf_counter()
  meta = environment(argv)
  meta["preset"] = dataclasses.asdict(preset)
  results = run_benchmarks(preset=preset, sections=sections, vocabulary_name=args.vocabulary,
                           data_dir=args.data_dir)
  meta["seconds"] = time.perf_counter() - start
  meta["load_average_at_end"] = os.getloadavg()
  out = Path(args.out) if args.out else (
      REPO / "benchmarks" / "results" /
      f"{datetime.datetime.now().strftime('%Y-%m-%dT%H%M')}.json")
  from recast import atomic_files
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_files.write_json(out, {"meta": meta, **results})
  print(f"\nwrote {out} ({meta['seconds']:.0f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
