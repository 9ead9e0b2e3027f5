"""benchmarks/: the whole `python -m benchmarks.run` at toy sizes writes every section's keys
with self-consistent numbers; the pieces that make the comparison fair (same shapes on
both sides, HF labels, padding counts) are checked exactly. No timing assertions."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
  sys.path.insert(0, str(REPO))

from benchmarks import measure, packing, run, train_step  # noqa: E402
from recast.trainer import network  # noqa: E402
from recast.trainer.network import T5Config  # noqa: E402

TINY = T5Config(vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64,
                num_encoder_layers=2, num_decoder_layers=1, dropout_rate=0.0)


def test_hf_model_has_the_same_parameters_as_recast():
  model = train_step.HFTrainer(TINY).model
  assert sum(p.numel() for p in model.parameters()) == network.param_count(TINY)
  assert model.config.feed_forward_proj == "gated-gelu"
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # untied
  assert not model.config.scale_decoder_outputs  # T5.1.1: no d_model**-0.5 rescale


def test_synthetic_batch_and_hf_arguments():
  batch = train_step.synthetic_batch(batch_size=2, task_feature_lengths={"inputs": 6,
                                                                          "targets": 4},
                                     vocab_size=50)
  targets = batch["decoder_target_tokens"]
  assert batch["encoder_input_tokens"].shape == (2, 6) and targets.shape == (2, 4)
  assert (batch["encoder_input_tokens"][:, -1] == 1).all() and (targets[:, -1] == 1).all()
  assert (batch["decoder_input_tokens"][:, 0] == 0).all()
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], targets[:, :-1])
  assert batch["encoder_input_tokens"].min() >= 1 and batch["encoder_input_tokens"].max() < 50

  padded = dict(batch)
  padded["decoder_target_tokens"] = np.array([[5, 1, 0, 0], [7, 8, 9, 1]], np.int32)
  hf = train_step.HFTrainer(TINY).device_batch(padded)
  assert hf["labels"].tolist() == [[5, 1, -100, -100], [7, 8, 9, 1]]
  assert hf["decoder_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_non_padding_counts_a_packed_batch():
  batch = {"encoder_input_tokens": np.array([[4, 4, 1, 5, 1, 0], [6, 6, 6, 1, 0, 0]]),
           "decoder_target_tokens": np.array([[3, 1, 3, 1], [3, 1, 0, 0]]),
           "decoder_segment_ids": np.array([[1, 1, 2, 2], [1, 1, 0, 0]])}
  assert packing.non_padding(batch) == {"inputs_tokens": 9, "inputs_slots": 12,
                                        "targets_tokens": 6, "targets_slots": 8,
                                        "examples": 3}
  fractions = packing._fractions(packing._sum_counts([batch]), rows=2)
  assert fractions["non_padding"] == pytest.approx(15 / 20)
  assert fractions["examples_per_row"] == pytest.approx(1.5)


def test_interleaved_seconds_alternates_and_skips_warmup():
  calls = []
  seconds = measure.interleaved_seconds({"a": lambda: calls.append("a"),
                                         "b": lambda: calls.append("b")},
                                        repetitions=2, warmup=1)
  assert calls == ["a", "b"] * 3
  assert [len(v) for v in seconds.values()] == [2, 2]


@pytest.mark.slow  # runs killed, resumed or many steps long: `make test-slow`
def test_benchmark_run_writes_every_section(shared_data, tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert run.main(["--preset=smoke", "--vocabulary=byte", f"--data_dir={shared_data}",
                   f"--out={out}"]) == 0
  result = json.loads(out.read_text())
  printed = capsys.readouterr().out
  assert "recast / hf_eager" in printed and "gpu: skipped (no GPU" in printed

  assert {"meta", "vocabulary", "train_step", "useful_tokens", "input_pipeline", "packing",
          "gpu"} <= set(result)
  assert result["meta"]["versions"]["jax"] and result["meta"]["command"].startswith("python")

  cpu = result["train_step"]["cpu"]
  recast, hf = cpu["systems"]["recast"], cpu["systems"]["hf_eager"]
  for system in (recast, hf):
    assert system["n"] == run.PRESETS["smoke"].step_repetitions
    assert system["encoder_tokens_per_s"] == pytest.approx(
        system["decoder_tokens_per_s"] * 64 / 16)
  assert cpu["ratio_vs_hf_eager"] == pytest.approx(
      recast["examples_per_s"] / hf["examples_per_s"])
  assert "skipped" in cpu["systems"]["hf_compile"]
  assert "skipped" in result["train_step"]["gpu"] and "skipped" in result["gpu"]

  useful = result["useful_tokens"]
  for side in ("recast_packed", "hf_padded"):
    assert 0 < useful[side]["non_padding"] <= 1
    assert useful[side]["useful_tokens_per_s"] == pytest.approx(
        useful[side]["non_padding"] * useful[side]["slots_per_s"])
  assert useful["ratio"] == pytest.approx(useful["recast_packed"]["useful_tokens_per_s"]
                                          / useful["hf_padded"]["useful_tokens_per_s"])

  stream = result["input_pipeline"]["wikipedia_en_span_corruption"]
  assert stream["pipeline"]["examples_per_s"] > 0
  assert 0 <= stream["train_loop"]["input_wait_fraction"] < 1
  assert stream["pipeline_over_consumption"] == pytest.approx(
      stream["pipeline"]["examples_per_s"] / stream["train_loop"]["consumption_examples_per_s"])

  (packed,) = result["packing"]
  assert packed["mixture_or_task_name"] == packing.GLUE4_MIXTURE
  for kind in ("packed", "padded_to_longest"):
    assert 0 < packed[kind]["non_padding"] <= 1 and packed[kind]["examples_per_row"] >= 1


def test_trace_summary_counts_device_stream_kernels(tmp_path, capsys):
  import gzip
  from benchmarks import trace_summary
  meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind,
                                       "args": {"name": name}}
  kernel = lambda tid, ts, dur, name: {"ph": "X", "pid": 2, "tid": tid, "ts": ts, "dur": dur,
                                       "name": name}
  events = [meta(1, 0, "process_name", "/host:CPU"), meta(2, 0, "process_name", "/device:GPU:0"),
            meta(2, 7, "thread_name", "Stream #7(Compute)"),
            meta(2, 8, "thread_name", "Stream #8(MemcpyH2D)"),
            meta(2, 9, "thread_name", "XLA Ops"),
            {"ph": "X", "pid": 1, "tid": 0, "ts": 0, "dur": 500, "name": "PjitFunction"},
            kernel(9, 0, 400, "fusion.3"),  # XLA's op line: not a kernel
            kernel(7, 0, 100, "sm90_xmma_gemm_bf16bf16_bf16f32"),
            kernel(7, 150, 50, "loop_multiply_fusion"),
            kernel(8, 160, 60, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop"),
            kernel(7, 300, 100, "sm90_xmma_gemm_bf16bf16_bf16f32")]
  path = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  s = trace_summary.summarize(str(path), steps=2)
  assert s["kernels_per_step"] == 2.0
  assert s["kernel_ms_per_step"] == pytest.approx(0.155)  # 310 us over 2 steps
  assert s["busy_ms_per_step"] == pytest.approx(0.135)  # [0,100) [150,220) [300,400)
  assert s["span_ms_per_step"] == pytest.approx(0.2)
  assert s["by_category"] == pytest.approx({"gemm": 0.1, "attention": 0.03, "fusion": 0.025})
  assert s["top_kernels"][0] == {"name": "sm90_xmma_gemm_bf16bf16_bf16f32", "category": "gemm",
                                 "ms_per_step": pytest.approx(0.1), "count_per_step": 1.0}
  assert trace_summary.main([str(path), "--steps", "2"]) == 0
  assert "2 kernels/step, kernel time 0.15 ms/step, device busy 0.14 of 0.20 ms" in (
      capsys.readouterr().out)


def test_gpu_benchmark_skips_without_a_gpu(capsys):
  from benchmarks import gpu
  assert gpu.main(["--numerics", "--profile_dir", "/nonexistent"]) == 0
  assert "gpu: skipped (no GPU: JAX backend is 'cpu'" in capsys.readouterr().out
  assert "skipped" in gpu.mfu(batch_size=2) and "skipped" in gpu.attention_numerics()


@pytest.mark.slow  # runs killed, resumed or many steps long: `make test-slow`
def test_gpu_benchmark_flow_on_cpu(monkeypatch, tmp_path, capsys):
  """`python -m benchmarks.gpu`'s whole flow with the GPU check bypassed and a toy model:
  cold start with the step compiled in the background, a profile, a warm kernel variant,
  an XLA option variant, a bad option (reported, not fatal), a larger batch, JSON written."""
  from benchmarks import gpu
  monkeypatch.setattr(gpu, "gpu_skip_reason", lambda: None)
  monkeypatch.setattr(gpu, "T5_1_1_BASE", TINY.replace(vocab_size=512, dtype="bfloat16"))
  monkeypatch.setattr(gpu, "T5_LENGTHS", {"inputs": 16, "targets": 8})
  out = tmp_path / "gpu.json"
  assert gpu.main(["--attention=xla,cudnn", "--batch_sizes=4,8", "--step_batch=0",
                   "--repetitions=1", "--steps_per_timing=2", f"--out={out}",
                   f"--profile_dir={tmp_path / 'profile'}",
                   "--compiler_options=[{\"xla_cpu_enable_fast_math\": false}, "
                   "{\"xla_no_such_option\": 1}]"]) == 0
  runs = json.loads(out.read_text())["mfu"]
  assert [(r["attention"], r["batch_size"]) for r in runs] == [
      ("xla", 4), ("cudnn", 4), ("xla", 4), ("xla", 4), ("xla", 8)]
  cold, cudnn, option, bad, larger = runs
  assert cold["time_to_first_step_s"] >= max(cold["init_s"], cold["compile_s"]) > 0
  assert "needs a GPU" in cudnn["skipped"]  # 'cudnn' off a GPU says why
  assert option["compiler_options"] == {"xla_cpu_enable_fast_math": False}
  assert "compile_and_first_step_s" in option and option["step_seconds"]["n"] == 1
  assert "No such compile option" in bad["skipped"]
  assert larger["examples_per_s"] > 0 and larger["mfu"] is None  # no peak known for a CPU
  assert "XLA options {'xla_cpu_enable_fast_math': False}" in capsys.readouterr().out


def test_cpu_attention_benchmark_compares_the_two_paths_on_the_same_numbers():
  """benchmarks/cpu_attention.py at a toy size: a row per path and dtype, and in float32
  the two paths agree (loss and every gradient) to rounding; no timing assertion."""
  from benchmarks import cpu_attention
  if network.jax.default_backend() != "cpu":
    pytest.skip("the CPU path is XLA:CPU's")
  rows = cpu_attention.run(dtypes=["float32", "bfloat16"], batch=2, length=16, d_model=32,
                           heads=2, layers=2, repetitions=1)
  assert [(r[0], r[1]) for r in rows] == [
      ("float32", "recast CPU path"), ("float32", "generic path"),
      ("bfloat16", "recast CPU path"), ("bfloat16", "generic path")]
  assert float(rows[0][4]) < 1e-5 and float(rows[0][5]) < 1e-4  # float32: the same numbers
  # bf16: two different programs (the CPU path's float32 dots round elsewhere), within bf16
  # rounding of each other.
  assert 0 < float(rows[2][5]) < 0.1
  assert network.jax.default_backend() == "cpu"  # the generic path's patch is undone


def test_steady_rate_drops_the_first_window_and_takes_the_median(tmp_path):
  """benchmarks/train_runs.py: a run's steady steps/s from its metrics.jsonl, as written by
  the trainer's MetricsWriter: the first window (the compilation wait) left out, the median
  of the rest; examples/s (packed rows hold several examples) and other splits not read;
  fewer than two windows give None."""
  from benchmarks import train_runs
  from recast import metrics_writer
  writer = metrics_writer.MetricsWriter(tmp_path, tensorboard=False)
  writer.write(20, "train", "", {"loss": 2.0, "steps_per_second": 0.5,
                                 "examples_per_second": 80.0})
  assert train_runs.steady_steps_per_second(tmp_path) is None
  for step, rate in ((40, 2.0), (60, 2.5), (80, 2.25)):
    writer.write(step, "train", "", {"loss": 1.0, "steps_per_second": rate,
                                     "examples_per_second": 100 * rate})
  writer.write(80, "validation", "glue_sst2", {"steps_per_second": 1000.0})
  assert train_runs.steady_steps_per_second(tmp_path) == 2.25


def test_cpu_dense_benchmark_times_both_weight_gradients_and_names_their_kernels():
  from benchmarks import cpu_dense
  rows = cpu_dense.weight_gradient_dots(repetitions=1, shapes=((64, 32, 48),))
  assert [(r["dtype"], r["tokens"], r["n"], r["m"]) for r in rows] == [
      ("bfloat16", 64, 32, 48), ("float32", 64, 32, 48)]
  for r in rows:
    assert r["folded_s"] > 0 and r["written_out_s"] > 0 and r["torch_s"] > 0
    assert r["max_rel_diff"] < 1e-5  # the same sum either way
  if network.jax.default_backend() == "cpu":
    bf16 = rows[0]["dot_via"]
    assert bf16 == {"folded": "xla (eigen), operands converted to f32",
                    "written_out": "ynnpack"}


def test_cpu_dense_train_step_compiles_two_programs_and_restores_the_switch():
  from benchmarks import cpu_dense
  if network.jax.default_backend() != "cpu":
    pytest.skip("the weight-gradient switch is XLA:CPU's")
  tiny = T5Config(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                  num_decoder_layers=1, dropout_rate=0.0).with_vocab_size(128)
  result = cpu_dense.train_step_both_ways(repetitions=1, dtype="bfloat16", config=tiny,
                                          batch_size=4, lengths=(16, 4))
  assert result["programs_differ"] and result["dtype"] == "bfloat16"
  assert result["first_loss"]["folded"] == pytest.approx(result["first_loss"]["written_out"],
                                                         rel=1e-3)
  assert network.WRITE_OUT_TRANSPOSE_DTYPES == ("bfloat16",)
  assert cpu_dense.main(["--dtypes=bf16", "--no-train_step"]) == 2
