"""The 36 datasets of ColD Fusion's model-recycling evaluation.

The `recycling36` mixture of them is registered in mixtures/studies.py.

ColD Fusion (Don-Yehiya et al. 2022) scores a base model by fine-tuning it on each of these
and reporting the gain over the base. A dataset that GLUE, SuperGLUE or the self-pretraining
set already has is that task (`glue_cola`, `super_glue_boolq`, `ag_news`, `dbpedia_14`,
...); the others are registered here, one `TextTaskSpec` each, from a native TFDS builder
where one exists and otherwise TFDS's `huggingface:` namespace.

Example (tweet_eval_irony):
  {"text": "Great, another Monday #not", "label": 1}
  -> {"inputs": "tweet_irony text: Great, another Monday #not", "targets": "irony"}
"""

from __future__ import annotations

from typing import Any, Mapping

import seqio
import tensorflow as tf

from recast.tasks import dspt, glue, registry, super_glue  # noqa: F401  (their tasks come first)
from recast.tasks.specs import TextTaskSpec, t5_inputs_template

NEWSGROUPS_20 = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos",
    "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey", "sci.crypt",
    "sci.electronics", "sci.med", "sci.space", "soc.religion.christian",
    "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc")
TREC_COARSE = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")  # TFDS `trec` label ids
TREC_FINE = (
    "manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date", "reason",
    "event", "state", "desc", "count", "other", "letter", "religion", "food", "country",
    "color", "termeq", "city", "body", "dismed", "mount", "money", "product", "period",
    "substance", "sport", "plant", "techmeth", "volsize", "instru", "abb", "speed", "word",
    "lang", "perc", "code", "dist", "temp", "symbol", "ord", "veh", "weight", "currency")
# tweet_eval/emoji's 20 emoji in label order, written as words so any vocabulary spells
# them: ❤ 😍 😂 💕 🔥 😊 😎 ✨ 💙 😘 📷 🇺🇸 ☀ 💜 😉 💯 😁 🎄 📸 😜
TWEET_EMOJI = (
    "red heart", "heart eyes", "tears of joy", "two hearts", "fire", "smiling eyes",
    "sunglasses", "sparkles", "blue heart", "kiss", "camera", "us flag", "sun",
    "purple heart", "wink", "hundred points", "grin", "christmas tree", "camera flash",
    "tongue out")
TWEET_EVAL_LABELS = {
    "emoji": TWEET_EMOJI,
    "emotion": ("anger", "joy", "optimism", "sadness"),
    "hate": ("non-hate", "hate"),
    "irony": ("non_irony", "irony"),
    "offensive": ("non-offensive", "offensive"),
    "sentiment": ("negative", "neutral", "positive"),
}
TWEET_EVAL_SIZES = {
    "emoji": (45000, 5000, 50000), "emotion": (3257, 374, 1421), "hate": (9000, 1000, 2970),
    "irony": (2862, 955, 784), "offensive": (11916, 1324, 860),
    "sentiment": (45615, 2000, 12284)}
_NLI = ("entailment", "neutral", "contradiction")
_POLARITY = ("negative", "positive")


@seqio.map_over_dataset
def stars_label(example: Mapping[str, Any]) -> dict:
  """amazon_reviews_multi: 1-5 `stars` -> label 0-4."""
  return {"review_title": example["review_title"], "review_body": example["review_body"],
          "label": tf.cast(example["stars"], tf.int64) - 1}


def _tweet_eval(config: str) -> TextTaskSpec:
  train, validation, test = TWEET_EVAL_SIZES[config]
  return TextTaskSpec(
      name=f"tweet_eval_{config}", source=f"huggingface:tweet_eval/{config}",
      splits=("train", "validation", "test"),
      inputs_template=t5_inputs_template(f"tweet_{config}", ["text"]),
      label_names=TWEET_EVAL_LABELS[config],
      metric_names=("macro_f1_and_accuracy",) if len(TWEET_EVAL_LABELS[config]) > 2
      else ("f1_and_accuracy",),
      num_examples={"train": train, "validation": validation, "test": test},
      description=f"TweetEval {config} (tweets)")


RECYCLING_SPECS = (
    TextTaskSpec(
        name="twenty_newsgroups", source="huggingface:setfit__20_newsgroups",
        splits=("train", "test"), inputs_template=t5_inputs_template("newsgroups", ["text"]),
        label_names=NEWSGROUPS_20, metric_names=("accuracy",),
        num_examples={"train": 11314, "test": 7532},
        description="20 Newsgroups: which newsgroup a post is from (accuracy)"),
    TextTaskSpec(
        name="amazon_reviews_multi_en", source="huggingface:amazon_reviews_multi/en",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("amazon_review", ["review_title", "review_body"]),
        label_names=("1", "2", "3", "4", "5"), prepare=(stars_label,),
        example_rows=tuple(
            {"review_id": f"en_{stars}", "product_id": "product_en_1",
             "reviewer_id": "reviewer_en_1", "stars": stars, "review_title": "Fine",
             "review_body": f"A {stars} star kettle.", "language": "en",
             "product_category": "kitchen"} for stars in range(1, 6)),
        metric_names=("accuracy",),
        num_examples={"train": 200000, "validation": 5000, "test": 5000},
        description="Multilingual Amazon reviews, English: star rating 1-5 (accuracy)"),
    TextTaskSpec(
        name="anli", source="anli/r1:0.1.0", splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("anli", ["hypothesis", "context"]),
        label_names=_NLI, metric_names=("accuracy",),
        num_examples={"train": 16946, "validation": 1000, "test": 1000},
        description="Adversarial NLI, round 1 (accuracy)"),
    TextTaskSpec(
        name="esnli", source="esnli:0.1.0", splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("esnli", ["hypothesis", "premise"]),
        label_names=_NLI, metric_names=("accuracy",),
        num_examples={"train": 549367, "validation": 9842, "test": 9824},
        description="e-SNLI entailment labels (accuracy)"),
    TextTaskSpec(
        name="financial_phrasebank",
        source="huggingface:financial_phrasebank/sentences_allagree", splits=("train",),
        inputs_template=t5_inputs_template("financial_phrasebank", ["sentence"]),
        label_names=("negative", "neutral", "positive"), metric_names=("accuracy",),
        num_examples={"train": 2264},
        description="Financial PhraseBank, all annotators agree (accuracy; train split only)"),
    TextTaskSpec(
        name="imdb", source="imdb_reviews/plain_text:1.0.0", splits=("train", "test"),
        inputs_template=t5_inputs_template("imdb", ["text"]), label_names=_POLARITY,
        metric_names=("accuracy",), num_examples={"train": 25000, "test": 25000},
        description="IMDb movie review sentiment (accuracy)"),
    TextTaskSpec(
        name="isear", source="huggingface:crcb__autotrain_data_isear_bert",
        splits=("train", "valid"), inputs_template=t5_inputs_template("isear", ["text"]),
        label_field="target", targets_template="{target}",
        label_names=("anger", "disgust", "fear", "guilt", "joy", "sadness", "shame"),
        metric_names=("accuracy",), num_examples={"train": 6008, "valid": 1507},
        description="ISEAR: which of 7 emotions a reported experience evokes (accuracy)"),
    TextTaskSpec(
        name="poem_sentiment", source="huggingface:poem_sentiment",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("poem_sentiment", ["verse_text"]),
        label_names=("negative", "positive", "no_impact", "mixed"),
        metric_names=("accuracy",),
        num_examples={"train": 892, "validation": 105, "test": 104},
        description="Poem verse sentiment (accuracy)"),
    TextTaskSpec(
        name="rotten_tomatoes", source="huggingface:rotten_tomatoes",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("rotten_tomatoes", ["text"]),
        label_names=_POLARITY, metric_names=("accuracy",),
        num_examples={"train": 8530, "validation": 1066, "test": 1066},
        description="Rotten Tomatoes movie review sentiment (accuracy)"),
    TextTaskSpec(
        name="sst5", source="huggingface:setfit__sst5", splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("sst5", ["text"]),
        label_names=("very negative", "negative", "neutral", "positive", "very positive"),
        metric_names=("accuracy",),
        num_examples={"train": 8544, "validation": 1101, "test": 2210},
        description="SST, five sentiment bins (accuracy)"),
    TextTaskSpec(
        name="trec_coarse", source="trec:1.0.0", splits=("train", "test"),
        inputs_template=t5_inputs_template("trec", ["text"]), label_field="label-coarse",
        targets_template="{label-coarse}", label_names=TREC_COARSE,
        metric_names=("accuracy",), num_examples={"train": 5452, "test": 500},
        description="TREC question classification, 6 coarse classes (accuracy)"),
    TextTaskSpec(
        name="trec_fine", source="trec:1.0.0", splits=("train", "test"),
        inputs_template=t5_inputs_template("trec_fine", ["text"]), label_field="label-fine",
        targets_template="{label-fine}", label_names=TREC_FINE,
        metric_names=("accuracy",), num_examples={"train": 5452, "test": 500},
        description="TREC question classification, 47 fine classes (accuracy)"),
    *(_tweet_eval(config) for config in TWEET_EVAL_LABELS),
)

# The 36 datasets, alphabetically as the ColD Fusion paper lists them.
RECYCLING36 = (
    "twenty_newsgroups", "ag_news", "amazon_reviews_multi_en", "anli", "super_glue_boolq",
    "super_glue_cb", "glue_cola", "super_glue_copa", "dbpedia_14", "esnli",
    "financial_phrasebank", "imdb", "isear", "glue_mnli", "glue_mrpc", "super_glue_multirc",
    "poem_sentiment", "glue_qnli", "glue_qqp", "rotten_tomatoes", "glue_rte", "glue_sst2",
    "sst5", "glue_stsb", "trec_coarse", "trec_fine", "tweet_eval_emoji",
    "tweet_eval_emotion", "tweet_eval_hate", "tweet_eval_irony", "tweet_eval_offensive",
    "tweet_eval_sentiment", "super_glue_wic", "glue_wnli", "super_glue_wsc",
    "yahoo_answers_topics")

for _spec in RECYCLING_SPECS:
  registry.register_text_task(_spec)
