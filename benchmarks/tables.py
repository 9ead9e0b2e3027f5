"""The tables `make bench` and `python -m benchmarks.gpu` print, one printer per section."""

from __future__ import annotations

from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain fixed-width table; floats get 3 significant digits (or 1 decimal if large)."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return "-" if v is None else str(v)
  cells = [[cell(v) for v in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
  return "\n".join(lines)


def lengths_text(lengths: dict) -> str:
  return f"{lengths['inputs']}/{lengths['targets']}"


def print_train_step(result: dict) -> None:
  rows = []
  for name, s in result["systems"].items():
    if "skipped" in s:
      rows.append([name, s["skipped"], None, None, None, None])
      continue
    rows.append([name, s["median_s"], s["encoder_tokens_per_s"], s["decoder_tokens_per_s"],
                 s["model_tflop_per_s"] * 1e3, s["first_step_s"]])
  print(f"\ntrain step: {result['device']} {result['dtype']}, batch {result['batch_size']} x "
        f"{lengths_text(result['task_feature_lengths'])}, {result['params'] / 1e6:.1f}M params, "
        "Adafactor")
  print(table(["system", "step s (median)", "enc tok/s", "dec tok/s", "GFLOP/s",
               "first step s"], rows))
  for other in ("hf_eager", "hf_compile"):
    if result.get(f"ratio_vs_{other}"):
      print(f"recast / {other}: {result[f'ratio_vs_{other}']:.2f}x")


def print_useful_tokens(result: dict) -> None:
  rows = [[name, result[name]["mean_s"], result[name]["useful_tokens_per_s"],
           result[name]["slots_per_s"], result[name]["examples_per_s"],
           result[name]["non_padding"]] for name in ("recast_packed", "hf_padded")]
  print(f"\nuseful tokens: {result['mixture_or_task_name']} at "
        f"{lengths_text(result['task_feature_lengths'])}; recast {result['rows_per_packed_batch']} "
        f"packed rows, HF {result['examples_per_padded_batch']} examples padded to the longest")
  print(table(["system", "s/batch", "useful tok/s", "slots/s", "examples/s", "non-padding"],
              rows))
  print(f"useful tokens/s, recast packed / HF padded: {result['ratio']:.2f}x")


def print_input_pipeline(results: dict) -> None:
  rows = []
  for name, r in results.items():
    rows.append([name, lengths_text(r["task_feature_lengths"]), r["pipeline"]["examples_per_s"],
                 r["train_loop"]["consumption_examples_per_s"], r["pipeline_over_consumption"],
                 r["train_loop"]["input_wait_fraction"]])
  print(f"\ninput pipeline (batch {next(iter(results.values()))['batch_size']} rows):")
  print(table(["stream", "lengths", "pipeline ex/s", "step consumes ex/s", "ratio",
               "input wait"], rows))


def print_packing(results: list) -> None:
  rows = [[r["mixture_or_task_name"], lengths_text(r["task_feature_lengths"]),
           r["packed"]["examples_per_row"], r["packed"]["inputs_non_padding"],
           r["packed"]["targets_non_padding"], r["packed"]["non_padding"],
           r["seqio_packed"]["non_padding"], r["padded_to_longest"]["non_padding"]]
          for r in results]
  print("\npacking (non-padding fraction of token slots; padded: HF batches of "
        f"{results[0]['padded_batch_size']} padded to the longest):")
  print(table(["mixture/task", "lengths", "ex/row", "inputs", "targets", "packed",
               "seqio packer", "padded"], rows))


def print_gpu(result: dict) -> None:
  if "skipped" in result:
    print(f"\ngpu: skipped ({result['skipped']})")
    return
  mfu = result["mfu"]
  if "time_to_first_step_s" in result:
    startup = (f"time to first step {result['time_to_first_step_s']:.1f}s (init "
               f"{result['init_s']:.1f}s, step compiled in {result['compile_s']:.1f}s)")
  else:
    startup = f"compiled and first step in {result['compile_and_first_step_s']:.1f}s"
  options = f", XLA options {result['compiler_options']}" if result.get("compiler_options") else ""
  print(f"\ngpu: {result['device_kind']} T5.1.1-base bf16, {result['attention']} attention"
        f"{options}, "
        f"batch {result['batch_size']} x {lengths_text(result['task_feature_lengths'])}: "
        f"{result['step_seconds']['median_s'] * 1e3:.1f} ms/step, "
        f"{result['examples_per_s']:.1f} ex/s, {result['achieved_tflop_per_s']:.1f} TFLOP/s, "
        f"MFU {'-' if mfu is None else f'{mfu:.1%}'}; {startup}")
