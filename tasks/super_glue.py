"""SuperGLUE as T5 casts it: `super_glue_boolq` ... `super_glue_axg`, one TextTaskSpec each.

Inputs are "<task> <field>: <text> ..." in T5's field order; targets the TFDS label
names. WSC marks the noun with * and the pronoun with #; ReCoRD gives one example per
gold answer ("record query: ... entities: a, b passage: ..." -> "a") and keeps every
answer for its metric; MultiRC keeps `idx` so answers are grouped by question. The
diagnostics AX-b and AX-g are cast as RTE, so an RTE model can be scored on them.
"""

from __future__ import annotations

from recast.tasks import preprocessors, registry
from recast.tasks.specs import TextTaskSpec, t5_inputs_template

SUPER_GLUE_VERSION = "1.0.2"
_BOOL = ("False", "True")
_RTE = ("entailment", "not_entailment")


def _source(config: str) -> str:
  return f"super_glue/{config}:{SUPER_GLUE_VERSION}"


SUPER_GLUE_SPECS = (
    TextTaskSpec(
        name="super_glue_boolq", source=_source("boolq"),
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("boolq", ["passage", "question"]),
        label_names=_BOOL, metric_names=("accuracy",),
        num_examples={"train": 9427, "validation": 3270, "test": 3245},
        description="BoolQ: yes/no questions about a passage (accuracy)"),
    TextTaskSpec(
        name="super_glue_cb", source=_source("cb"), splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("cb", ["hypothesis", "premise"]),
        label_names=("entailment", "contradiction", "neutral"),
        metric_names=("macro_f1_and_accuracy",),
        num_examples={"train": 250, "validation": 56, "test": 250},
        description="CommitmentBank: 3-way entailment (accuracy + macro-F1)"),
    TextTaskSpec(
        name="super_glue_copa", source=_source("copa"),
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("copa",
                                           ["choice1", "choice2", "premise", "question"]),
        label_names=("choice1", "choice2"), metric_names=("accuracy",),
        num_examples={"train": 400, "validation": 100, "test": 500},
        description="COPA: choose the cause or effect (accuracy)"),
    TextTaskSpec(
        name="super_glue_multirc", source=_source("multirc"),
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("multirc", ["question", "answer", "paragraph"]),
        label_names=_BOOL, postprocessor="multirc", metric_names=("multirc_f1a_em",),
        num_examples={"train": 27243, "validation": 4848, "test": 9693},
        example_rows=(
            {"paragraph": "Sam ate. Then Sam slept.", "question": "What did Sam do first?",
             "answer": "Ate", "idx": {"paragraph": 0, "question": 0, "answer": 0},
             "label": 1},
            {"paragraph": "Sam ate. Then Sam slept.", "question": "What did Sam do first?",
             "answer": "Slept", "idx": {"paragraph": 0, "question": 0, "answer": 1},
             "label": 0}),
        description="MultiRC: is this answer right, one example per answer (F1a + EM)"),
    TextTaskSpec(
        name="super_glue_record", source=_source("record"),
        splits=("train", "validation", "test"),
        inputs_template="record query: {query} entities: {entities} passage: {passage}",
        targets_template="{answer}", label_field=None, postprocessor="record",
        metric_names=("record_em_f1",), keep_fields=("answers",),
        prepare=(preprocessors.record_one_example_per_answer,),
        text_fields=("passage", "query"),
        num_examples={"train": 100730, "validation": 10000, "test": 10000},
        example_rows=(
            {"passage": "Ann met Bob.\n@highlight\nBob is tall", "query": "@placeholder met Bob",
             "entities": ["Ann", "Bob"], "answers": ["Ann"],
             "idx": {"passage": 0, "query": 0}},
            {"passage": "Cy saw Dee and Dee.", "query": "Cy saw @placeholder",
             "entities": ["Cy", "Dee"], "answers": ["Dee", "Dee"],
             "idx": {"passage": 1, "query": 1}},
            {"passage": "No answer here.", "query": "Who is @placeholder",
             "entities": ["No"], "answers": [], "idx": {"passage": 2, "query": 2}}),
        description="ReCoRD: fill the @placeholder with an entity (max EM and F1)"),
    TextTaskSpec(
        name="super_glue_rte", source=_source("rte"), splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("rte", ["hypothesis", "premise"]),
        label_names=_RTE, metric_names=("accuracy",),
        num_examples={"train": 2490, "validation": 277, "test": 3000},
        description="RTE (SuperGLUE fields): entailment (accuracy)"),
    TextTaskSpec(
        name="super_glue_wic", source=_source("wic"), splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("wic", ["sentence1", "sentence2", "word"]),
        label_names=_BOOL, metric_names=("accuracy",),
        num_examples={"train": 5428, "validation": 638, "test": 1400},
        description="WiC: same word sense in both sentences (accuracy)"),
    TextTaskSpec(
        name="super_glue_wsc", source=_source("wsc.fixed"),
        splits=("train", "validation", "test"),
        inputs_template="wsc text: {text}", label_names=_BOOL, metric_names=("accuracy",),
        prepare=(preprocessors.mark_wsc_spans,),
        num_examples={"train": 554, "validation": 104, "test": 146},
        example_rows=(
            {"text": "Mark told Pete many lies about himself .", "span1_index": 0,
             "span1_text": "Mark", "span2_index": 6, "span2_text": "himself", "label": 1,
             "idx": 0},
            {"text": "Mark told Pete many lies about himself .", "span1_index": 2,
             "span1_text": "Pete", "span2_index": 6, "span2_text": "himself", "label": 0,
             "idx": 1}),
        description="WSC (fixed): does the #pronoun# refer to the *noun* (accuracy)"),
    TextTaskSpec(
        name="super_glue_axb", source=_source("axb"), splits=("test",),
        inputs_template=t5_inputs_template("rte", {"hypothesis": "sentence2",
                                                   "premise": "sentence1"}),
        label_names=_RTE, metric_names=("matthews_corrcoef",), num_examples={"test": 1104},
        description="AX-b broad-coverage diagnostics, cast as RTE; test only (MCC)"),
    TextTaskSpec(
        name="super_glue_axg", source=_source("axg"), splits=("test",),
        inputs_template=t5_inputs_template("rte", ["hypothesis", "premise"]),
        label_names=_RTE, metric_names=("accuracy",), num_examples={"test": 356},
        description="AX-g Winogender diagnostics, cast as RTE; test only (accuracy)"),
)

for _spec in SUPER_GLUE_SPECS:
  registry.register_text_task(_spec)
