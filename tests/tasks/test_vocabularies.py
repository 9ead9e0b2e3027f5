"""The tasks' vocabulary: resolved at use time from gin/env, described for checkpoints,
mismatches rejected; `recast vocab build` writes a model with T5's conventions."""

import logging
from pathlib import Path

import gin
import pytest
import seqio
import sentencepiece as spm

from recast.tasks import vocab_build, vocabularies
from recast import cli

SPM = str(Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
  monkeypatch.delenv(vocabularies.ENV_VAR, raising=False)
  monkeypatch.setattr(vocabularies, "_t5_vocabulary_readable", lambda: False)  # offline
  gin.clear_config()
  yield
  gin.clear_config()


def test_resolution_order(monkeypatch):
  proxy = vocabularies.TASK_VOCABULARY
  assert isinstance(vocabularies.get_vocabulary(), seqio.ByteVocabulary)  # fallback
  assert proxy.vocab_size == 256 + 3 + vocabularies.EXTRA_IDS
  monkeypatch.setenv(vocabularies.ENV_VAR, SPM)
  assert vocabularies.vocabulary_file(proxy) == SPM
  gin.parse_config("VOCABULARY = 'byte'")
  assert isinstance(vocabularies.get_vocabulary(), seqio.ByteVocabulary)
  gin.parse_config(f"VOCABULARY = @seqio.SentencePieceVocabulary()\n"
                   f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{SPM}'\n"
                   "seqio.SentencePieceVocabulary.extra_ids = 7")
  assert vocabularies.get_vocabulary().extra_ids == 7
  with vocabularies.use_vocabulary(vocabularies.byte_vocabulary()):
    assert proxy.encode("hi") == [107, 108]  # bytes + 3 special ids
  assert proxy.eos_id == 1 and proxy.extra_ids == 7


def test_byte_fallback_warns_once_per_process(monkeypatch, caplog):
  monkeypatch.setattr(vocabularies, "_warned", set())
  caplog.set_level(logging.WARNING)
  for _ in range(2):  # seqio resolves the vocabulary twice per example, and per feature
    vocabularies.get_vocabulary()
    assert vocabularies.TASK_VOCABULARY.encode("hi") == [107, 108]
  warnings = [r.getMessage() for r in caplog.records if "byte vocabulary" in r.getMessage()]
  assert len(warnings) == 1
  assert vocabularies.T5_VOCABULARY_PATH in warnings[0]
  assert "22.4% accuracy on bytes, 37.0% with a 1,000-piece SentencePiece model" in warnings[0]
  assert "--gin.VOCABULARY=auto" in warnings[0]
  assert "recast vocab build --task TASK --vocab_size 1000" in warnings[0]


def test_missing_model_file_is_a_user_error():
  gin.parse_config("VOCABULARY = '/nonexistent/spiece.model'")
  with pytest.raises(vocabularies.VocabularyError, match="not found.*recast vocab build"):
    vocabularies.get_vocabulary()


def test_describe_and_check_compatible():
  sp = vocabularies.describe(vocabularies.sentencepiece_vocabulary(SPM))
  assert sp["type"] == "sentencepiece" and sp["extra_ids"] == 100
  assert sp["size"] == seqio.SentencePieceVocabulary(SPM).vocab_size + 100
  assert len(sp["sha256"]) == 64
  byte = vocabularies.describe(vocabularies.byte_vocabulary())
  assert byte == {"type": "byte", "size": 359, "extra_ids": 100, "sha256": None,
                  "path": None}
  vocabularies.check_compatible(sp, dict(sp, path="/elsewhere"))
  vocabularies.check_compatible({"type": "sentencepiece"}, sp)  # older metadata
  with pytest.raises(vocabularies.VocabularyError, match="type: the checkpoint has "
                     "'sentencepiece', the tasks use 'byte'.*--gin.VOCABULARY"):
    vocabularies.check_compatible(sp, byte)
  with pytest.raises(vocabularies.VocabularyError, match="sha256"):
    vocabularies.check_compatible(sp, dict(sp, sha256="0" * 64))


def test_build_vocabulary_with_t5_conventions(tmp_path):
  lines = [f"the {w} sat on the mat number {i}" for i in range(300)
           for w in ("cat", "dog", "bird")]
  path = vocab_build.build_vocabulary(lines, vocab_size=40, out=tmp_path / "v" / "m.model")
  model = spm.SentencePieceProcessor(model_file=str(path))
  assert (model.pad_id(), model.eos_id(), model.unk_id(), model.bos_id()) == (0, 1, 2, -1)
  assert model.get_piece_size() == 40
  vocab = vocabularies.sentencepiece_vocabulary(str(path))
  assert vocab.vocab_size == 140
  assert vocab.decode(vocab.encode("the cat sat")) == "the cat sat"
  assert [p.name for p in path.parent.iterdir()] == ["m.model"]  # no temporaries left
  with pytest.raises(vocab_build.VocabBuildError, match="no text"):
    vocab_build.build_vocabulary([], vocab_size=60, out=tmp_path / "empty.model")


def test_required_text_is_spelt_even_with_rare_characters(tmp_path):
  """Label names such as "not_entailment" must encode without unknown pieces, though "_"
  is too rare in the text for the character coverage to keep it."""
  lines = [f"the {w} sat on the mat number {i}" for i in range(300)
           for w in ("cat", "dog", "bird")]
  path = vocab_build.build_vocabulary(lines, vocab_size=40, out=tmp_path / "m.model",
                                      required_text=["not_entailment", "entailment"])
  model = spm.SentencePieceProcessor(model_file=str(path))
  assert model.unk_id() not in model.encode("not_entailment")
  assert model.decode(model.encode("not_entailment")) == "not_entailment"
  unguarded = vocab_build.build_vocabulary(lines + ["not_entailment"], vocab_size=40,
                                           out=tmp_path / "plain.model")
  plain = spm.SentencePieceProcessor(model_file=str(unguarded))
  assert plain.unk_id() in plain.encode("not_entailment")  # what the guard prevents


def test_vocab_build_command_on_task_text(tmp_path, capsys):
  folder = tmp_path / "glue" / "cola"
  folder.mkdir(parents=True)
  folder.joinpath("train.jsonl").write_text("".join(
      f'{{"sentence": "the {w} ran to the {v} {i}", "label": 1, "idx": {i}}}\n'
      for i, (w, v) in enumerate([("cat", "house"), ("dog", "park")] * 100)))
  out = tmp_path / "cola.model"
  assert cli.main(["vocab", "build", "--task", "glue_cola", "--vocab_size", "40",
                   "--out", str(out), f"--gin.DATA_DIR={tmp_path}"]) == 0
  assert "40 pieces + 100 extra ids = 140" in capsys.readouterr().out
  model = spm.SentencePieceProcessor(model_file=str(out))
  assert model.get_piece_size() == 40
  for label in ("acceptable", "unacceptable"):  # never in the text, still spelt
    assert model.unk_id() not in model.encode(label) and \
        model.decode(model.encode(label)) == label
  assert cli.main(["vocab", "build", "--vocab_size", "40", "--out", str(out)]) == 2
  assert "give at least one --task or --text_file" in capsys.readouterr().err


def _auto_task(tmp_path, rows):
  import json
  from recast.tasks import task_files
  (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = tmp_path / "tasks.yaml"
  path.write_text("tasks:\n  - {name: auto_vocab_toy, files: {train: rows.jsonl}, "
                  "inputs: 'nli: {text}', targets: '{label}', "
                  "labels: [entailment, not_entailment]}\n")
  task_files.register_task_file(path)
  return path


def test_auto_builds_from_the_run_text_once_and_reuses_it(tmp_path, monkeypatch, capsys):
  """VOCABULARY=auto: a SentencePiece model of the run's train inputs and targets, built into
  RECAST_CACHE_DIR on first use; the same text later (another process: the memo cleared)
  reuses the file; other text gets another model."""
  from recast.tasks import task_files
  monkeypatch.setenv("RECAST_CACHE_DIR", str(tmp_path / "cache"))
  rows = [{"text": f"the {w} sat on the mat number {i}", "label": ["entailment",
           "not_entailment"][i % 2]} for i in range(200) for w in ("cat", "dog")]
  path = _auto_task(tmp_path, rows)
  try:
    gin.parse_config("VOCABULARY = 'auto'\nMIXTURE_OR_TASK_NAME = 'auto_vocab_toy'")
    vocab = vocabularies.get_vocabulary()
    assert "VOCABULARY=auto: built a" in capsys.readouterr().err
    [model] = (tmp_path / "cache" / "vocabularies").iterdir()
    assert vocabularies.vocabulary_file(vocab) == str(model)
    processor = spm.SentencePieceProcessor(model_file=str(model))
    # 400 inputs of 9 words, 400 one-word targets: 4 * sqrt(4000) = 253 pieces at most; the
    # text supports fewer. TREC's size, 5,500 lines of 10 words: 4 * sqrt(55000) = 938.
    assert vocabularies.auto_vocab_size(["a b c d e f g h i"] * 400 + ["x"] * 400) == 253
    assert vocabularies.auto_vocab_size(["a b c d e f g h i j"] * 5500) == 938
    assert vocabularies.auto_vocab_size(["ab"]) == 2 + 16  # characters + 16 at least
    assert 40 < processor.get_piece_size() <= 253
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2)
    for label in ("entailment", "not_entailment"):  # "_" is kept: labels are required text
      assert processor.unk_id() not in processor.encode(label)
      assert processor.decode(processor.encode(label)) == label
    assert vocabularies.TASK_VOCABULARY.extra_ids == 100
    monkeypatch.setattr(vocabularies, "_auto_models", {})  # as a second run would start
    # CPython may hand a new task object a freed one's id (CI saw it once): every id the same
    # from here, so a memo keyed by id would serve the re-registered task the old model.
    monkeypatch.setattr(vocabularies, "id", lambda obj: 0, raising=False)
    mtime = model.stat().st_mtime_ns
    assert vocabularies.vocabulary_file(vocabularies.get_vocabulary()) == str(model)
    assert "reusing" in capsys.readouterr().err and model.stat().st_mtime_ns == mtime
    task_files.unregister_task_file(path)
    _auto_task(tmp_path, rows[:100])
    assert vocabularies.vocabulary_file(vocabularies.get_vocabulary()) != str(model)
    assert len(list((tmp_path / "cache" / "vocabularies").iterdir())) == 2
  finally:
    task_files.unregister_task_file(path)


def test_auto_needs_a_task():
  gin.parse_config("VOCABULARY = 'auto'")
  with pytest.raises(vocabularies.VocabularyError, match="needs MIXTURE_OR_TASK_NAME"):
    vocabularies.get_vocabulary()
  gin.parse_config("MIXTURE_OR_TASK_NAME = 'no_such_task_here'")
  with pytest.raises(vocabularies.VocabularyError, match="no task or mixture 'no_such"):
    vocabularies.get_vocabulary()
