"""Decoded text back to what metrics compare: label ids, floats, grouped answers.

Each postprocessor has SeqIO's signature `fn(output: str, example=None, is_target=False)`;
`example` is the preprocessed example (numpy values), `is_target` says whether `output` is
the gold target. Text that names no label becomes `UNPARSEABLE` (-1), which metrics count
as wrong.

  >>> class_label("equivalent", label_names=("not_equivalent", "equivalent"))
  1
  >>> class_label("maybe", label_names=("not_equivalent", "equivalent"))
  -1
  >>> to_float("3.8")
  3.8
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from recast.tasks import specs as specs_lib

UNPARSEABLE = -1


def _text(output: Any) -> str:
  if isinstance(output, bytes):
    output = output.decode("utf-8")
  return str(output).strip()


def class_label(output: Any, *, label_names: Sequence[str],
                example: Optional[Mapping[str, Any]] = None, is_target: bool = False) -> int:
  """Label name -> id; anything else -> UNPARSEABLE."""
  del example, is_target
  text = _text(output)
  return list(label_names).index(text) if text in label_names else UNPARSEABLE


def to_float(output: Any, *, example: Optional[Mapping[str, Any]] = None,
             is_target: bool = False) -> float:
  """"3.8" -> 3.8; text that is not a number -> float(UNPARSEABLE)."""
  del example, is_target
  try:
    return float(_text(output))
  except ValueError:
    return float(UNPARSEABLE)


def text(output: Any, *, example: Optional[Mapping[str, Any]] = None,
         is_target: bool = False) -> str:
  """Free text, stripped (SQuAD answers, generated targets)."""
  del example, is_target
  return _text(output)


def _field(example: Mapping[str, Any], *path: str) -> Any:
  """example["idx"]["question"], or the flattened example["idx/question"]."""
  value = example
  for i, key in enumerate(path):
    if isinstance(value, Mapping) and key in value:
      value = value[key]
    elif isinstance(value, Mapping) and "/".join(path[i:]) in value:
      return value["/".join(path[i:])]
    else:
      raise KeyError(f"example has no field {'/'.join(path)}; keys: {list(example)}")
  return value


def multirc(output: Any, *, label_names: Sequence[str],
            example: Optional[Mapping[str, Any]] = None, is_target: bool = False) -> Any:
  """MultiRC: {"group": (paragraph, question), "value": id} for targets; predictions are
  {"value": id} (tasks.metrics.multirc_f1a_em groups answers by the targets' key)."""
  value = class_label(output, label_names=label_names)
  if not is_target:
    return {"value": value}
  group = (int(_field(example, "idx", "paragraph")), int(_field(example, "idx", "question")))
  return {"group": group, "value": value}


def record(output: Any, *, example: Optional[Mapping[str, Any]] = None,
           is_target: bool = False) -> Any:
  """ReCoRD: the predicted entity; for targets every gold answer and the query's idx."""
  if not is_target:
    return _text(output)
  answers = [_text(a) for a in np.asarray(_field(example, "answers")).reshape(-1)]
  idx = {k: int(_field(example, "idx", k)) for k in ("passage", "query")}
  return {"idx": idx, "answers": answers}


POSTPROCESSORS: dict[str, Callable[..., Any]] = {
    "class_label": class_label,
    "float": to_float,
    "text": text,
    "multirc": multirc,
    "record": record,
}
_NEED_LABEL_NAMES = ("class_label", "multirc")


def make_postprocessor(spec: specs_lib.TextTaskSpec) -> Callable[..., Any]:
  """The postprocessor named by `spec`, bound to its label names where it needs them."""
  fn = POSTPROCESSORS[spec.postprocessor_name]
  if spec.postprocessor_name in _NEED_LABEL_NAMES:
    fn = functools.partial(fn, label_names=tuple(spec.label_names or ()))
    functools.update_wrapper(fn, POSTPROCESSORS[spec.postprocessor_name])
  return fn
