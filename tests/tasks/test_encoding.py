"""Data and task files that are not UTF-8 are user errors naming the file, the line of the
first bad byte and the fix, wherever recast reads them (never a raw UnicodeDecodeError)."""

import json
import textwrap

import gin
import pytest
import seqio

import recast.tasks  # noqa: F401  (registers the built-in tasks)
from recast.tasks import registry, sources, task_files

GOOD = ['{"sentence": "a", "label": 1, "idx": 0}', '{"sentence": "b", "label": 0, "idx": 1}']
# Latin-1 "café": 0xe9 cannot start a UTF-8 character followed by '"'.
LATIN1_ROW = b'{"sentence": "caf\xe9", "label": 1, "idx": 2}'


def _lines(fmt: str) -> list[bytes]:
  """Three rows of glue_sst2 in `fmt`, the third holding a 0xff byte (line 3 in the file)."""
  if fmt == "jsonl":
    return [GOOD[0].encode(), GOOD[1].encode(), b'{"sentence": "\xff", "label": 1, "idx": 2}']
  sep = b"," if fmt == "csv" else b"\t"
  return [sep.join([b"sentence", b"label", b"idx"]), sep.join([b"a", b"1", b"0"]),
          sep.join([b"\xff", b"1", b"1"])]


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_local_rows_not_utf8_name_file_and_line(tmp_path, fmt):
  path = tmp_path / f"train.{fmt}"
  path.write_bytes(b"\n".join(_lines(fmt)) + b"\n")
  spec = registry.task_spec("glue_sst2")
  for read in (lambda: list(sources.read_rows(path, spec)),
               lambda: sources.count_examples(path)):
    with pytest.raises(sources.LocalDataError) as e:
      read()
    assert str(path) in str(e.value) and "line 3:" in str(e.value)
    assert "byte 0xff" in str(e.value) and "save it as UTF-8" in str(e.value)


def test_bad_byte_after_the_sampled_rows_is_found_before_streaming(tmp_path):
  """Row 250 is past the 200 rows sampled for the signature; tf.data would wrap the error."""
  folder = tmp_path / "glue" / "sst2"
  folder.mkdir(parents=True)
  rows = [json.dumps({"sentence": f"s{i}", "label": i % 2, "idx": i}).encode()
          for i in range(249)]
  (folder / "train.jsonl").write_bytes(b"\n".join(rows + [LATIN1_ROW]) + b"\n")
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  source = seqio.get_mixture_or_task("glue_sst2").source
  with pytest.raises(sources.LocalDataError,
                     match=r"sst2/train\.jsonl, line 250: byte 0xe9 .*save it as UTF-8"):
    source.get_dataset("train")


def test_not_utf8_across_read_chunks(tmp_path, monkeypatch):
  # Offsets: a0 b1 \n2 [e2 82 ac]3-5 (the euro sign) \n6 [e2 82]7-8 x9: the euro sign
  # spans the first two 4-byte chunks, the broken character the last two; the first bad
  # byte is at offset 7, after two newlines: line 3.
  monkeypatch.setattr(sources, "_CHUNK_BYTES", 4)
  path = tmp_path / "t.jsonl"
  path.write_bytes(b"ab\n\xe2\x82\xac\n\xe2\x82x\n")
  message = sources.not_utf8(path)
  assert message.startswith(f"{path}, line 3: byte 0xe2 (byte offset 7)")
  path.write_bytes("ab\n€\n€x\n".encode())
  assert sources.not_utf8(path) is None


def test_task_file_not_utf8(tmp_path):
  path = tmp_path / "tasks.yaml"
  path.write_bytes(b"tasks:\n  - name: enc_check\n    inputs: \"q\xff: {text}\"\n")
  with pytest.raises(task_files.TaskFileError) as e:
    task_files.read_task_file(path)
  assert str(path) in str(e.value) and "line 3:" in str(e.value)
  assert "save it as UTF-8" in str(e.value)


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_task_file_data_not_utf8(tmp_path, fmt):
  data = tmp_path / f"train.{fmt}"
  lines = _lines(fmt)
  data.write_bytes(b"\n".join(lines) + b"\n")
  path = tmp_path / "tasks.yaml"
  path.write_text(textwrap.dedent(f"""\
      tasks:
        - name: enc_check_{fmt}
          files: {{train: train.{fmt}}}
          inputs: "sentence: {{sentence}}"
          targets: "{{label}}"
          labels: [negative, positive]
      """))
  with pytest.raises(task_files.TaskFileError) as e:
    task_files.register_task_file(path)
  assert str(data) in str(e.value) and "line 3:" in str(e.value)
  assert "save it as UTF-8" in str(e.value)
  assert f"enc_check_{fmt}" not in seqio.TaskRegistry.names()
