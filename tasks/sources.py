"""Where a task's examples come from: local JSONL/CSV/TSV files, or the TFDS builder.

Every task can read `<data dir>/<builder>/<split>.jsonl|csv|tsv` with the builder's field
names (the layout of ../shared/data: `glue/rte/train.jsonl`, `super_glue/cb/validation.jsonl`).
The data directory is resolved when the data is read (tasks register at import, gin is
parsed later), in this order:

  1. the spec's explicit `files` (task files);
  2. the gin macro `TASK_DATA_DIRS` ({"glue_rte": "/data"}; "tfds" forces TFDS), then the
     spec's own `data_dir`;
  3. the gin macro `DATA_DIR` (`--gin.DATA_DIR=/data`), then `$RECAST_DATA_DIR`;
  4. otherwise the TFDS builder (`seqio.TfdsDataSource`).
With a data directory set, a task whose folder is missing is an error, never a silent
download. Local values are converted to the types TFDS yields (labels may also be
written as label names); a bad row raises LocalDataError naming file, line and column, and
so does a file that is not UTF-8 (checked whole before its rows stream through tf.data).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from recast.tasks import specs as specs_lib
from recast import errors

ENV_VAR = "RECAST_DATA_DIR"
FORMATS = ("jsonl", "csv", "tsv")
TFDS = "tfds"
_SAMPLE_ROWS = 200
_CHUNK_BYTES = 1 << 20


class LocalDataError(errors.UserError):
  """A local data file that is missing or has a row recast cannot read."""


def _macro(name: str) -> Any:
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None


def data_dir_for(spec: specs_lib.TextTaskSpec) -> Optional[str]:
  """The data directory `spec` reads local files from now; None means TFDS."""
  per_task = _macro("TASK_DATA_DIRS") or {}
  for value in (per_task.get(spec.name), spec.data_dir, _macro("DATA_DIR"),
                os.environ.get(ENV_VAR)):
    if value:
      return None if str(value) == TFDS else os.path.expanduser(str(value))
  return None


def split_file(folder: str | os.PathLike, split: str) -> Optional[Path]:
  """`folder/split.jsonl` (or .csv, .tsv) if one exists."""
  for fmt in FORMATS:
    path = Path(folder) / f"{split}.{fmt}"
    if path.is_file():
      return path
  return None


def local_files(spec: specs_lib.TextTaskSpec) -> Optional[dict[str, Path]]:
  """Split -> local file for the splits that have one; None when the task reads TFDS.

  Raises LocalDataError when a data directory is set but holds no folder for the task.
  """
  if spec.files:
    return {split: Path(os.path.expanduser(path)) for split, path in spec.files.items()}
  data_dir = data_dir_for(spec)
  if data_dir is None:
    return None
  folder = Path(data_dir) / spec.builder_name
  found = {s: p for s in spec.splits if (p := split_file(folder, s)) is not None}
  if not found:
    where = (f"{folder}" if folder.is_absolute() else
             f"{folder} (relative to the working folder {os.getcwd()})")
    raise LocalDataError(
        f"task {spec.name!r} reads local files from data directory {data_dir}, but "
        f"{where} holds none of {', '.join(f'{s}.jsonl' for s in spec.splits)} (or .csv/"
        ".tsv); add them, point --gin.DATA_DIR at the folder that holds them, give the task "
        f"its own directory with --gin.TASK_DATA_DIRS=\"{{'{spec.name}': '/path'}}\", or "
        f"unset DATA_DIR/{ENV_VAR} to read TFDS")
  return found


# ---------------------------------------------------------------------------- reading rows

def not_utf8(path: str | os.PathLike) -> Optional[str]:
  """Why `path` is not UTF-8 text (file, line of the first bad byte, the fix), or None.

  The line is 1-based: one more than the newlines before the bad byte. Reads the file in
  chunks, so a large file is never held whole.
  """
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = newlines = 0  # bytes and b"\n"s before `chunk`
  with open(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK_BYTES)
      pending = len(decoder.getstate()[0])  # an unfinished character from the last chunk
      try:
        decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        at = e.start - pending  # in `chunk`; < 0 when the bad bytes began in the last one
        line = newlines + chunk.count(b"\n", 0, max(at, 0)) + 1
        return (f"{path}, line {line}: byte {e.object[e.start]:#04x} (byte offset "
                f"{offset + at}) is not UTF-8 text, which recast reads; save it as UTF-8 "
                f"(e.g. `iconv -f WINDOWS-1252 -t UTF-8 {Path(path).name} > utf8-"
                f"{Path(path).name}`, naming the encoding it has)")
      if not chunk:
        return None
      offset += len(chunk)
      newlines += chunk.count(b"\n")


def _file_version(path: Path) -> tuple[str, int, int]:
  stat = path.stat()
  return str(path.resolve()), stat.st_size, stat.st_mtime_ns


_UTF8_CHECKED: set[tuple[str, int, int]] = set()


def check_utf8(path: str | os.PathLike) -> None:
  """Raises LocalDataError (file, line, fix) unless `path` is UTF-8; once per file version."""
  key = _file_version(Path(path))
  if key not in _UTF8_CHECKED:
    message = not_utf8(path)
    if message:
      raise LocalDataError(message)
    _UTF8_CHECKED.add(key)


def _raw_rows(path: Path) -> Iterator[tuple[int, dict]]:
  """(line number, row dict) for every example in a JSONL/CSV/TSV file."""
  try:
    yield from _decoded_rows(path)
  except UnicodeDecodeError:
    raise LocalDataError(not_utf8(path) or f"{path} is not UTF-8; save it as UTF-8") \
        from None


def _decoded_rows(path: Path) -> Iterator[tuple[int, dict]]:
  if path.suffix == ".jsonl":
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise LocalDataError(f"{path}:{line_no}: not valid JSON ({e.msg}); each line "
                               "must be one JSON object") from e
        if not isinstance(row, dict):
          raise LocalDataError(f"{path}:{line_no}: a JSON object is expected, got "
                               f"{type(row).__name__}")
        yield line_no, row
  else:
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
      for row in reader:
        yield reader.line_num, row


def _scalar_spec(values: Sequence[Any]) -> tf.TensorSpec:
  if values and all(isinstance(v, bool) for v in values):
    return tf.TensorSpec([], tf.bool)
  if values and all(isinstance(v, int) and not isinstance(v, bool) or _is_int_text(v)
                    for v in values):
    return tf.TensorSpec([], tf.int64)
  if values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    or _is_float_text(v) for v in values):
    return tf.TensorSpec([], tf.float32)
  return tf.TensorSpec([], tf.string)


def _is_int_text(v: Any) -> bool:
  if not isinstance(v, str):
    return False
  try:
    int(v)
    return True
  except ValueError:
    return False


def _is_float_text(v: Any) -> bool:
  if not isinstance(v, str):
    return False
  try:
    float(v)
    return True
  except ValueError:
    return False


def _infer_spec(values: Sequence[Any]) -> Any:
  """TensorSpec (or a dict of them) that fits the sampled values of one column."""
  present = [v for v in values if v is not None]
  if present and all(isinstance(v, dict) for v in present):
    keys = sorted({k for v in present for k in v})
    return {k: _infer_spec([v.get(k) for v in present]) for k in keys}
  if present and all(isinstance(v, list) for v in present):
    inner = _scalar_spec([x for v in present for x in v])
    if not any(present):
      inner = tf.TensorSpec([], tf.string)
    return tf.TensorSpec([None], inner.dtype)
  return _scalar_spec(present)


def row_signature(path: Path, spec: specs_lib.TextTaskSpec) -> dict[str, Any]:
  """Field -> tf.TensorSpec for one local file, from the spec and the first rows."""
  sample = []
  for _, row in _raw_rows(path):
    sample.append(row)
    if len(sample) >= _SAMPLE_ROWS:
      break
  if not sample:
    raise LocalDataError(f"{path} has no examples; remove it or add rows")
  # Columns every sampled row has; rows with extra columns are fine.
  columns = [c for c in sample[0] if all(c in row for row in sample)]
  signature = {c: _infer_spec([row.get(c) for row in sample]) for c in columns}
  for field in spec.input_fields + specs_lib.template_fields(spec.targets_template):
    if field in signature and field != spec.label_field and \
        isinstance(signature[field], tf.TensorSpec) and signature[field].shape.rank == 0:
      signature[field] = tf.TensorSpec([], tf.string)
  if spec.label_field and spec.label_field in signature:
    dtype = tf.float32 if spec.is_regression else tf.int64 if spec.is_classification \
        else signature[spec.label_field].dtype
    signature[spec.label_field] = tf.TensorSpec([], dtype)
  return signature


def _convert(value: Any, signature: Any, *, where: str, column: str,
             spec: specs_lib.TextTaskSpec) -> Any:
  if isinstance(signature, dict):
    value = value if isinstance(value, dict) else {}
    return {k: _convert(value.get(k), s, where=where, column=f"{column}.{k}", spec=spec)
            for k, s in signature.items()}
  if signature.shape.rank == 1:
    if not isinstance(value, list):
      raise LocalDataError(f"{where}: column {column!r} should be a list, got {value!r}")
    return [_scalar(v, signature.dtype, where=where, column=column, spec=spec)
            for v in value]
  return _scalar(value, signature.dtype, where=where, column=column, spec=spec)


def _scalar(value: Any, dtype: tf.DType, *, where: str, column: str,
            spec: specs_lib.TextTaskSpec) -> Any:
  if value is None:
    raise LocalDataError(f"{where}: column {column!r} is empty or missing")
  is_label = column == spec.label_field and spec.is_classification
  if is_label and isinstance(value, str) and value in spec.label_names:
    return spec.label_names.index(value)
  try:
    if dtype == tf.string:
      return value if isinstance(value, str) else json.dumps(value) \
          if isinstance(value, (list, dict)) else str(value)
    if dtype == tf.bool:
      return value if isinstance(value, bool) else str(value).lower() in ("1", "true")
    if dtype == tf.int64:
      number = int(value) if not isinstance(value, float) or value.is_integer() else None
      if number is None:
        raise ValueError(value)
    else:
      number = float(value)
  except (TypeError, ValueError):
    names = f" (or one of the label names {list(spec.label_names)})" if is_label else ""
    raise LocalDataError(f"{where}: column {column!r} holds {value!r}, expected "
                         f"{dtype.name}{names}") from None
  if is_label and not -1 <= number < len(spec.label_names):
    raise LocalDataError(f"{where}: column {column!r} holds label {number}, outside "
                         f"0..{len(spec.label_names) - 1} ({', '.join(spec.label_names)}; "
                         "-1 for unlabelled)")
  return number


def read_rows(path: str | os.PathLike, spec: specs_lib.TextTaskSpec, *,
              signature: Optional[Mapping[str, Any]] = None) -> Iterator[dict]:
  """Rows of a local file converted to `signature` (default: `row_signature`).

  Raises LocalDataError naming file, line and column for a row that does not fit.
  Reading a whole file through this validates it eagerly (task files do).
  """
  path = Path(path)
  signature = signature or row_signature(path, spec)
  # With `prepare` steps the templates name prepared fields, not raw columns (dspt's
  # sentiment140 maps `polarity` to `label`), so only the file's own columns are required.
  templated = [] if spec.prepare else (
      spec.input_fields + specs_lib.template_fields(spec.targets_template)
      + ([spec.label_field] if spec.label_field else []))
  required = list(dict.fromkeys(templated + list(signature)))
  for line_no, row in _raw_rows(path):
    where = f"{path}:{line_no}"
    missing = [c for c in required if c not in row]
    if missing:
      raise LocalDataError(f"{where}: no column {missing[0]!r} (task {spec.name!r} uses "
                           f"it); columns: {', '.join(row)}")
    yield {c: _convert(row.get(c), s, where=where, column=c, spec=spec)
           for c, s in signature.items()}


_COUNTS: dict[tuple[str, int, int], int] = {}


def count_examples(path: str | os.PathLike) -> int:
  """Examples in a local file, counted once per file version (path, size, mtime)."""
  path = Path(path)
  key = _file_version(path)
  if key not in _COUNTS:
    _COUNTS[key] = sum(1 for _ in _raw_rows(path))
  return _COUNTS[key]


def local_dataset(path: str | os.PathLike, spec: specs_lib.TextTaskSpec) -> tf.data.Dataset:
  """A tf.data.Dataset streaming the rows of one local file (TFDS-like dtypes).

  The file's encoding is checked here, in full: an error inside the stream would reach the
  user as a tf.errors.InvalidArgumentError wrapping a traceback.
  """
  path = Path(path)
  check_utf8(path)
  signature = row_signature(path, spec)
  return tf.data.Dataset.from_generator(
      lambda: read_rows(path, spec, signature=signature), output_signature=signature)


# ----------------------------------------------------------------------------- the source

class TaskDataSource(seqio.DataSource):
  """A seqio DataSource that picks local files or TFDS each time it is read."""

  def __init__(self, spec: specs_lib.TextTaskSpec):
    self.spec = spec
    self._tfds_source: Optional[seqio.TfdsDataSource] = None
    super().__init__(splits=spec.splits, num_input_examples=None, caching_permitted=True)

  @property
  def tfds_source(self) -> seqio.TfdsDataSource:
    if not self.spec.source:
      raise LocalDataError(f"task {self.spec.name!r} has no TFDS source; it reads only "
                           "its local files")
    if self._tfds_source is None:
      self._tfds_source = seqio.TfdsDataSource(tfds_name=self.spec.source,
                                               splits=list(self.spec.splits))
    return self._tfds_source

  @property
  def splits(self) -> Sequence[str]:
    """The declared splits; with local files, those that have a file."""
    files = local_files(self.spec)
    return tuple(files) if files is not None else tuple(self.spec.splits)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def describe(self) -> str:
    """"local:/data/glue/rte" or "tfds:glue/rte:2.0.0" (what `recast tasks list` prints)."""
    files = local_files(self.spec)
    if files is not None:
      folders = sorted({str(p.parent) for p in files.values()})
      return "local:" + ",".join(folders)
    return f"tfds:{self.spec.source}"

  def _split_path(self, split: str, files: Mapping[str, Path]) -> Path:
    if split not in files:
      raise LocalDataError(
          f"task {self.spec.name!r} has no split {split!r} in its local data; available: "
          f"{', '.join(files) or 'none'}")
    path = files[split]
    if not path.is_file():
      raise LocalDataError(f"task {self.spec.name!r}: split {split!r} file {path} not found")
    return path

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1
                  ) -> tf.data.Dataset:
    files = local_files(self.spec)
    if files is None:
      if split not in self.spec.splits:
        raise LocalDataError(f"task {self.spec.name!r} has no split {split!r}; available: "
                             f"{', '.join(self.spec.splits)}")
      return self.tfds_source.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                          shard_info=shard_info)
    ds = local_dataset(self._split_path(split, files), self.spec)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def num_input_examples(self, split: str) -> Optional[int]:
    """From local files (counted once), else the recorded sizes, else TFDS metadata."""
    files = local_files(self.spec)
    if files is not None:
      return count_examples(self._split_path(split, files))
    if self.spec.num_examples and split in self.spec.num_examples:
      return int(self.spec.num_examples[split])
    try:
      return self.tfds_source.num_input_examples(split)
    except Exception:  # no metadata offline
      return None

  def __repr__(self) -> str:
    return f"TaskDataSource(task={self.spec.name!r}, source={self.spec.source!r})"
