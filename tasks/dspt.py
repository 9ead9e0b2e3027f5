"""The 14 downstream corpora of the self-pretraining paper (Krishna et al. 2022).

The `dspt14` mixture of them is registered in mixtures/studies.py.

"Downstream datasets make surprisingly good pretraining corpora" pretrains on the train
split of each of these and fine-tunes on the same dataset. QQP and MNLI are the GLUE tasks
(`glue_qqp`, `glue_mnli`); the others are registered here, one `TextTaskSpec` each, from a
native TFDS builder where one exists and otherwise TFDS's `huggingface:` namespace (which
needs the `datasets` package; offline, point DATA_DIR at `<builder>/<split>.jsonl` files).

Casting, T5 style:
  conll2012_ner  "ner: Mr. Smith visited Paris ." -> "PERSON: Smith; GPE: Paris"  (span F1)
  squad_v1       "question: Who ...? context: ..." -> "Denver Broncos"  (EM/F1, all answers)
  swag/hellaswag "swag context: ... ending0: ... ending3: ..." -> "ending2"
  classification "ag_news title: ... description: ..." -> "Sports"
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from recast.tasks import glue, metrics, postprocessors, registry, specs  # noqa: F401  (glue: qqp, mnli)
from recast.tasks.specs import TextTaskSpec, t5_inputs_template

# OntoNotes 5 entity types in the order of the CoNLL-2012 BIO tag ids (tag 2k+1 = B-type k,
# 2k+2 = I-type k, 0 = O), as `conll2012_ontonotesv5` numbers them.
ONTONOTES_ENTITY_TYPES = (
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "DATE", "TIME", "PERCENT",
    "MONEY", "QUANTITY", "ORDINAL", "CARDINAL", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")
MULTIPLE_CHOICE_LABELS = ("ending0", "ending1", "ending2", "ending3")

DISCOVERY_MARKERS = (
    "[no-conn]", "absolutely,", "accordingly", "actually,", "additionally", "admittedly,",
    "afterward", "again,", "already,", "also,", "alternately,", "alternatively", "although,",
    "altogether,", "amazingly,", "and", "anyway,", "apparently,", "arguably,", "as_a_result,",
    "basically,", "because_of_that", "because_of_this", "besides,", "but", "by_comparison,",
    "by_contrast,", "by_doing_this,", "by_then", "certainly,", "clearly,", "coincidentally,",
    "collectively,", "consequently", "conversely", "curiously,", "currently,", "elsewhere,",
    "especially,", "essentially,", "eventually,", "evidently,", "finally,", "first,",
    "firstly,", "for_example", "for_instance", "fortunately,", "frankly,", "frequently,",
    "further,", "furthermore", "generally,", "gradually,", "happily,", "hence,", "here,",
    "historically,", "honestly,", "hopefully,", "however", "ideally,", "immediately,",
    "importantly,", "in_contrast,", "in_fact,", "in_other_words", "in_particular,",
    "in_short,", "in_sum,", "in_the_end,", "in_the_meantime,", "in_turn,", "incidentally,",
    "increasingly,", "indeed,", "inevitably,", "initially,", "instead,", "interestingly,",
    "ironically,", "lastly,", "lately,", "later,", "likewise,", "locally,", "luckily,",
    "maybe,", "meaning,", "meantime,", "meanwhile,", "moreover", "mostly,", "namely,",
    "nationally,", "naturally,", "nevertheless", "next,", "nonetheless", "normally,",
    "notably,", "now,", "obviously,", "occasionally,", "oddly,", "often,", "on_the_contrary,",
    "on_the_other_hand", "once,", "only,", "optionally,", "or,", "originally,", "otherwise,",
    "overall,", "particularly,", "perhaps,", "personally,", "plus,", "preferably,",
    "presently,", "presumably,", "previously,", "probably,", "rather,", "realistically,",
    "really,", "recently,", "regardless,", "remarkably,", "sadly,", "second,", "secondly,",
    "separately,", "seriously,", "significantly,", "similarly,", "simultaneously", "slowly,",
    "so,", "sometimes,", "soon,", "specifically,", "still,", "strangely,", "subsequently,",
    "suddenly,", "supposedly,", "surely,", "surprisingly,", "technically,", "thankfully,",
    "then,", "theoretically,", "thereafter,", "thereby,", "therefore", "third,", "thirdly,",
    "this,", "though,", "thus,", "together,", "traditionally,", "truly,", "truthfully,",
    "typically,", "ultimately,", "undoubtedly,", "unfortunately,", "unsurprisingly,",
    "usually,", "well,", "yet,")

DBPEDIA_14_LABELS = (
    "Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder",
    "MeanOfTransportation", "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album",
    "Film", "WrittenWork")
YAHOO_ANSWERS_TOPICS = (
    "Society & Culture", "Science & Mathematics", "Health", "Education & Reference",
    "Computers & Internet", "Sports", "Business & Finance", "Entertainment & Music",
    "Family & Relationships", "Politics & Government")


# ----------------------------------------------------------------------------- prepare steps


def bio_tags_to_spans_text(words: tf.Tensor, tags: tf.Tensor) -> tf.Tensor:
  """CoNLL-2012 BIO tags -> "TYPE: mention; TYPE: mention" (tasks.metrics' span format).

  Args:
    words: string [n] tokens of one sentence.
    tags: int [n] tag ids (0 = O, 2k+1 = B-type k, 2k+2 = I-type k).
  Returns:
    scalar string; "" for a sentence without entities. An I- tag that does not continue
    an entity of its type starts one (the usual lenient IOB reading).
  """
  tags = tf.cast(tags, tf.int32)
  inside = tags > 0
  kind = tf.where(inside, (tags - 1) // 2, -1)
  is_begin = tf.logical_and(inside, tags % 2 == 1)
  previous_kind = tf.concat([[-1], kind[:-1]], axis=0)
  starts = tf.logical_and(inside, tf.logical_or(is_begin, kind != previous_kind))
  span_of_token = tf.cumsum(tf.cast(starts, tf.int32)) - 1
  num_spans = tf.reduce_sum(tf.cast(starts, tf.int32))
  mention_words = tf.RaggedTensor.from_value_rowids(
      tf.boolean_mask(words, inside), tf.boolean_mask(span_of_token, inside), nrows=num_spans)
  mentions = tf.strings.reduce_join(mention_words, axis=1, separator=" ")
  types = tf.gather(tf.constant(ONTONOTES_ENTITY_TYPES), tf.boolean_mask(kind, starts))
  pieces = tf.strings.join([types, mentions], separator=metrics.ENTITY_TYPE_SEPARATOR)
  return tf.strings.reduce_join(pieces, separator=metrics.ENTITY_SEPARATOR)


def conll_sentences(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Documents -> one example per sentence {"sentence": str, "entities": str}.

  Reads TFDS's `conll2012_ontonotesv5` documents ({"sentences": {"words", "named_entities"}})
  and also local files with one sentence per row ({"words": [...], "named_entities": [...]}).
  """
  def render(sentence):
    return {"sentence": tf.strings.reduce_join(sentence["words"], separator=" "),
            "entities": bio_tags_to_spans_text(sentence["words"], sentence["named_entities"])}

  if "sentences" in dataset.element_spec:
    dataset = dataset.flat_map(lambda doc: tf.data.Dataset.from_tensor_slices(
        {k: doc["sentences"][k] for k in ("words", "named_entities")}))
  return dataset.map(render, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def squad_first_answer(example: Mapping[str, Any]) -> dict:
  """SQuAD: "answer" is the first gold answer (the target); "answers" keeps all of them."""
  answers = example["answers"]["text"]
  first = tf.cond(tf.size(answers) > 0, lambda: answers[0],
                  lambda: tf.constant(specs.UNKNOWN_LABEL))
  return {"question": example["question"], "context": example["context"], "answer": first,
          "answers": answers}


def squad_answers(output: Any, *, example: Optional[Mapping[str, Any]] = None,
                  is_target: bool = False) -> Any:
  """SQuAD postprocessor: the predicted answer; for targets every gold answer."""
  if not is_target:
    return postprocessors.text(output)
  return [postprocessors.text(a) for a in np.asarray(example["answers"]).reshape(-1)]


# SQuAD scores a prediction against every gold answer, so its targets come back as lists.
postprocessors.POSTPROCESSORS.setdefault("squad", squad_answers)


@seqio.map_over_dataset
def hellaswag_endings(example: Mapping[str, Any]) -> dict:
  """HellaSwag's `endings` list -> fields ending0..ending3 (as SWAG has them)."""
  endings = example["endings"]
  out = {"context": example["context"], "label": example["label"]}
  for i in range(len(MULTIPLE_CHOICE_LABELS)):
    out[f"ending{i}"] = endings[i]
  return out


@seqio.map_over_dataset
def sentiment140_label(example: Mapping[str, Any]) -> dict:
  """Sentiment140 polarity 0/2/4 -> label 0/1/2 (negative, neutral, positive)."""
  return {"text": example["text"],
          "label": tf.cast(example["polarity"], tf.int64) // 2}


@seqio.map_over_dataset
def toxicity_label(example: Mapping[str, Any]) -> dict:
  """Wikipedia toxicity: the annotators' toxicity score -> label 1 when at least 0.5."""
  return {"text": example["text"],
          "label": tf.cast(example["toxicity"] >= 0.5, tf.int64)}


# ----------------------------------------------------------------------------- the tasks

DSPT_SPECS = (
    TextTaskSpec(
        name="conll2012_ner", source="huggingface:conll2012_ontonotesv5/english_v4",
        splits=("train", "validation", "test"),
        inputs_template="ner: {sentence}", targets_template="{entities}", label_field=None,
        prepare=(conll_sentences,), metric_names=("span_f1",), text_fields=("sentence",),
        example_rows=(  # local files: one sentence per row (TFDS: documents of sentences)
            {"words": ["Mr.", "John", "Smith", "visited", "New", "York", "."],
             "named_entities": [0, 1, 2, 0, 9, 10, 0]},
            {"words": ["It", "rained", "on", "Monday", "."],
             "named_entities": [0, 0, 0, 15, 0]}),
        description="CoNLL-2012 (OntoNotes 5) named entities as 'TYPE: mention; ...' "
                    "(span F1)"),
    TextTaskSpec(
        name="squad_v1", source="squad/v1.1:3.0.0", splits=("train", "validation"),
        inputs_template="question: {question} context: {context}",
        targets_template="{answer}", label_field=None, postprocessor="squad",
        prepare=(squad_first_answer,), keep_fields=("answers",),
        metric_names=("squad_em_f1",), text_fields=("question", "context"),
        example_rows=(
            {"id": "q0", "title": "Super_Bowl_50", "question": "Who won Super Bowl 50?",
             "context": "The Denver Broncos defeated the Carolina Panthers.",
             "answers": {"text": ["Denver Broncos", "The Denver Broncos"],
                         "answer_start": [4, 0]}},
            {"id": "q1", "title": "Super_Bowl_50", "question": "Who lost?",
             "context": "The Denver Broncos defeated the Carolina Panthers.",
             "answers": {"text": ["Carolina Panthers"], "answer_start": [32]}}),
        num_examples={"train": 87599, "validation": 10570},
        description="SQuAD v1.1 reading comprehension (EM, F1 over all gold answers)"),
    TextTaskSpec(
        name="swag", source="huggingface:swag/regular", splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template(
            "swag", {"context": "startphrase", **{e: e for e in MULTIPLE_CHOICE_LABELS}}),
        label_names=MULTIPLE_CHOICE_LABELS, metric_names=("accuracy",),
        num_examples={"train": 73546, "validation": 20006, "test": 20005},
        description="SWAG: grounded commonsense multiple choice (accuracy)"),
    TextTaskSpec(
        name="hellaswag", source="hellaswag:1.1.0", splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("hellaswag", ["context", *MULTIPLE_CHOICE_LABELS]),
        label_names=MULTIPLE_CHOICE_LABELS, prepare=(hellaswag_endings,),
        metric_names=("accuracy",), text_fields=("context",),
        example_rows=tuple(
            {"context": "A man opens a jar.", "endings": ["eats.", "sings.", "runs.", "sits."],
             "label": i, "activity_label": "Cooking", "split_type": "indomain",
             "source_id": f"activitynet~v_{i}"} for i in range(4)),
        num_examples={"train": 39905, "validation": 10042, "test": 10003},
        description="HellaSwag: commonsense sentence completion (accuracy)"),
    TextTaskSpec(
        name="ag_news", source="ag_news_subset:1.0.0", splits=("train", "test"),
        inputs_template=t5_inputs_template("ag_news", ["title", "description"]),
        label_names=("World", "Sports", "Business", "Sci/Tech"), metric_names=("accuracy",),
        num_examples={"train": 120000, "test": 7600},
        description="AG News topic classification (accuracy)"),
    TextTaskSpec(
        name="jigsaw_toxicity", source="wikipedia_toxicity_subtypes:0.3.1",
        splits=("train", "test"),
        inputs_template=t5_inputs_template("toxicity", ["text"]),
        label_names=("non-toxic", "toxic"), prepare=(toxicity_label,),
        metric_names=("f1_and_accuracy",), num_examples={"train": 159571, "test": 63978},
        example_rows=tuple(
            {"id": str(i), "text": text, "toxicity": score, "severe_toxicity": 0.0,
             "obscene": 0.0, "threat": 0.0, "insult": 0.0, "identity_attack": 0.0,
             "language": "en"}
            for i, (text, score) in enumerate([("Thanks for the edit.", 0.0),
                                               ("You idiot.", 1.0)])),
        description="Jigsaw toxic comments (Wikipedia talk pages): toxic or not (F1, acc)"),
    TextTaskSpec(
        name="sentiment140", source="sentiment140:1.0.0", splits=("train", "test"),
        inputs_template=t5_inputs_template("sentiment140", ["text"]),
        label_names=("negative", "neutral", "positive"), prepare=(sentiment140_label,),
        metric_names=("accuracy",), num_examples={"train": 1600000, "test": 498},
        example_rows=tuple(
            {"text": text, "polarity": polarity, "date": "Mon May 11 03:17:40 UTC 2009",
             "query": "kindle2", "user": "tpryan"}
            for text, polarity in [("my kindle broke", 0), ("kindle for sale", 2),
                                   ("I love my kindle", 4)]),
        description="Sentiment140 tweets: polarity (accuracy)"),
    TextTaskSpec(
        name="paws", source="paws_wiki/labeled_final_raw:1.1.0",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("paws", ["sentence1", "sentence2"]),
        label_names=("different_meaning", "paraphrase"), metric_names=("accuracy",),
        num_examples={"train": 49401, "validation": 8000, "test": 8000},
        description="PAWS-Wiki paraphrase adversaries (accuracy)"),
    TextTaskSpec(
        name="dbpedia_14", source="huggingface:dbpedia_14", splits=("train", "test"),
        inputs_template=t5_inputs_template("dbpedia", ["title", "content"]),
        label_names=DBPEDIA_14_LABELS, metric_names=("accuracy",),
        num_examples={"train": 560000, "test": 70000},
        description="DBpedia-14 ontology classification (accuracy)"),
    TextTaskSpec(
        name="yahoo_answers_topics", source="huggingface:yahoo_answers_topics",
        splits=("train", "test"),
        inputs_template=t5_inputs_template(
            "yahoo_answers", ["question_title", "question_content", "best_answer"]),
        label_field="topic", targets_template="{topic}", label_names=YAHOO_ANSWERS_TOPICS,
        metric_names=("accuracy",), num_examples={"train": 1400000, "test": 60000},
        description="Yahoo! Answers topic classification (accuracy)"),
    TextTaskSpec(
        name="discovery", source="huggingface:discovery/discovery",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("discovery", ["sentence1", "sentence2"]),
        label_names=DISCOVERY_MARKERS, metric_names=("accuracy",),
        num_examples={"train": 1566000, "validation": 87000, "test": 87000},
        description="Discovery: which of 174 discourse markers joins two sentences (acc)"),
    TextTaskSpec(
        name="amazon_polarity", source="huggingface:amazon_polarity", splits=("train", "test"),
        inputs_template=t5_inputs_template("amazon_polarity", ["title", "content"]),
        label_names=("negative", "positive"), metric_names=("accuracy",),
        num_examples={"train": 3600000, "test": 400000},
        description="Amazon review polarity (accuracy)"),
)

# The 14 corpora in the paper's order; QQP and MNLI are GLUE's tasks.
DSPT14 = ("conll2012_ner", "squad_v1", "swag", "hellaswag", "ag_news", "glue_qqp",
          "jigsaw_toxicity", "glue_mnli", "sentiment140", "paws", "dbpedia_14",
          "yahoo_answers_topics", "discovery", "amazon_polarity")

for _spec in DSPT_SPECS:
  registry.register_text_task(_spec)
