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
  assert "recast vocab build --task TASK --vocab_size 8000" in warnings[0]
  assert "--gin.VOCABULARY=" in warnings[0]


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
