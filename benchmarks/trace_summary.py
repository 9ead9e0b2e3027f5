"""Summarises a JAX profiler trace (the `perfetto_trace.json.gz` that
`jax.profiler.start_trace(..., create_perfetto_trace=True)` writes): where the accelerator's
time went, per kernel and per kind of kernel, and how much of the traced wall time the
device was busy at all (the rest is launch gaps and host work)."""

from __future__ import annotations

import collections
import gzip
import json
import re
from typing import Any

CATEGORIES = (  # first match wins; kernel names as cuBLAS/cuDNN/XLA spell them
    ("attention", re.compile(r"fmha|flash|cudnn|attn", re.I)),
    ("gemm", re.compile(r"gemm|xmma|cutlass|cublas|matmul|dot|wgmma|sm90_", re.I)),
    ("reduce", re.compile(r"reduc", re.I)),
    ("scatter", re.compile(r"scatter", re.I)),
    ("copy", re.compile(r"copy|transpose|memcpy|memset", re.I)),
    ("fusion", re.compile(r"fusion|loop_|input_", re.I)),
)


def category(kernel_name: str) -> str:
  for name, pattern in CATEGORIES:
    if pattern.search(kernel_name):
      return name
  return "other"


def _busy_us(intervals: list[tuple[float, float]]) -> float:
  """Length of the union of [start, end) intervals."""
  busy, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if s > end:
      busy += e - s
      end = e
    elif e > end:
      busy += e - end
      end = e
  return busy


def summarize(path: str, *, steps: int = 1) -> dict[str, Any]:
  """Per-step device time of a trace: {"device_threads", "kernels_per_step",
  "kernel_ms_per_step", "busy_ms_per_step", "span_ms_per_step", "by_category" (ms per
  step), "top_kernels" [{name, category, ms_per_step, count_per_step}]}.

  Kernels are the events of the device's stream threads (`/device:GPU:N`, threads named
  "Stream ..."); when a trace has no such threads, every device thread but XLA's op and
  module lines.
  """
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  devices = {pid for pid, name in processes.items() if "/device:" in name}
  device_threads = {key: name for key, name in threads.items() if key[0] in devices}
  streams = {key for key, name in device_threads.items() if "stream" in name.lower()}
  if not streams:
    streams = {key for key, name in device_threads.items()
               if not re.search(r"XLA (Ops|Modules)|Steps|TraceMe", name)}
  total = collections.Counter()
  count = collections.Counter()
  intervals = []
  for e in events:
    if e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in streams:
      continue
    total[e["name"]] += e["dur"]
    count[e["name"]] += 1
    intervals.append((e["ts"], e["ts"] + e["dur"]))
  by_category = collections.Counter()
  for name, us in total.items():
    by_category[category(name)] += us
  span = (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else 0.0
  per_step = lambda us: us / 1e3 / steps
  return {"device_threads": sorted(set(device_threads.values())),
          "kernels_per_step": sum(count.values()) / steps,
          "kernel_ms_per_step": per_step(sum(total.values())),
          "busy_ms_per_step": per_step(_busy_us(intervals)),
          "span_ms_per_step": per_step(span),
          "by_category": {k: per_step(v) for k, v in by_category.most_common()},
          "top_kernels": [{"name": name, "category": category(name),
                           "ms_per_step": per_step(us), "count_per_step": count[name] / steps}
                          for name, us in total.most_common(60)]}


def format_summary(s: dict[str, Any], *, top: int = 30) -> list[str]:
  """The lines that print a `summarize` result: totals, per category, the top kernels."""
  lines = [f"{s['kernels_per_step']:.0f} kernels/step, kernel time "
           f"{s['kernel_ms_per_step']:.2f} ms/step, device busy {s['busy_ms_per_step']:.2f} of "
           f"{s['span_ms_per_step']:.2f} ms"]
  lines += [f"  {name:<10} {ms:8.2f} ms/step" for name, ms in s["by_category"].items()]
  lines += [f"  {row['ms_per_step']:8.2f} ms  x{row['count_per_step']:<6.0f} "
            f"{row['category']:<10} {row['name'][:100]}" for row in s["top_kernels"][:top]]
  return lines


def main(argv=None) -> int:
  """`python -m benchmarks.trace_summary TRACE [--steps N]`: prints the summary."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m benchmarks.trace_summary",
                                   description=main.__doc__)
  parser.add_argument("trace")
  parser.add_argument("--steps", type=int, default=1)
  parser.add_argument("--top", type=int, default=30)
  args = parser.parse_args(argv)
  print("\n".join(format_summary(summarize(args.trace, steps=args.steps), top=args.top)))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
