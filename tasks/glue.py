"""GLUE as T5 casts it: `glue_cola` ... `glue_ax`, one TextTaskSpec each.

Inputs are "<task> <field>: <text> ..." (T5's field order), targets the TFDS label names;
STS-B targets are scores rounded to 0.2 ("3.8"). `glue_ax` (diagnostics, test only) is
cast like MNLI so an MNLI model can be scored on it.
"""

from __future__ import annotations

from recast.tasks import registry
from recast.tasks.specs import TextTaskSpec, t5_inputs_template

GLUE_VERSION = "2.0.0"
_NLI = ("entailment", "neutral", "contradiction")

GLUE_SPECS = (
    TextTaskSpec(
        name="glue_cola", source=f"glue/cola:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("cola", ["sentence"]),
        label_names=("unacceptable", "acceptable"), metric_names=("matthews_corrcoef",),
        num_examples={"train": 8551, "validation": 1043, "test": 1063},
        description="CoLA: grammatical acceptability (MCC)"),
    TextTaskSpec(
        name="glue_sst2", source=f"glue/sst2:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("sst2", ["sentence"]),
        label_names=("negative", "positive"), metric_names=("accuracy",),
        num_examples={"train": 67349, "validation": 872, "test": 1821},
        description="SST-2: movie review sentiment (accuracy)"),
    TextTaskSpec(
        name="glue_mrpc", source=f"glue/mrpc:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("mrpc", ["sentence1", "sentence2"]),
        label_names=("not_equivalent", "equivalent"), metric_names=("f1_and_accuracy",),
        num_examples={"train": 3668, "validation": 408, "test": 1725},
        description="MRPC: paraphrase (F1 + accuracy)"),
    TextTaskSpec(
        name="glue_qqp", source=f"glue/qqp:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("qqp", ["question1", "question2"]),
        label_names=("not_duplicate", "duplicate"), metric_names=("f1_and_accuracy",),
        num_examples={"train": 363846, "validation": 40430, "test": 390965},
        description="QQP: duplicate questions (F1 + accuracy)"),
    TextTaskSpec(
        name="glue_stsb", source=f"glue/stsb:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("stsb", ["sentence1", "sentence2"]),
        regression_step=0.2, metric_names=("pearson_spearman",),
        num_examples={"train": 5749, "validation": 1500, "test": 1379},
        description="STS-B: similarity 0-5, targets rounded to 0.2 (Pearson, Spearman)"),
    TextTaskSpec(
        name="glue_mnli", source=f"glue/mnli:{GLUE_VERSION}",
        splits=("train", "validation_matched", "validation_mismatched", "test_matched",
                "test_mismatched"),
        inputs_template=t5_inputs_template("mnli", ["hypothesis", "premise"]),
        label_names=_NLI, metric_names=("accuracy",),
        num_examples={"train": 392702, "validation_matched": 9815,
                      "validation_mismatched": 9832, "test_matched": 9796,
                      "test_mismatched": 9847},
        description="MNLI: entailment, matched and mismatched validation (accuracy)"),
    TextTaskSpec(
        name="glue_qnli", source=f"glue/qnli:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("qnli", ["question", "sentence"]),
        label_names=("entailment", "not_entailment"), metric_names=("accuracy",),
        num_examples={"train": 104743, "validation": 5463, "test": 5463},
        description="QNLI: does the sentence answer the question (accuracy)"),
    TextTaskSpec(
        name="glue_rte", source=f"glue/rte:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("rte", ["sentence1", "sentence2"]),
        label_names=("entailment", "not_entailment"), metric_names=("accuracy",),
        num_examples={"train": 2490, "validation": 277, "test": 3000},
        description="RTE: entailment (accuracy)"),
    TextTaskSpec(
        name="glue_wnli", source=f"glue/wnli:{GLUE_VERSION}",
        splits=("train", "validation", "test"),
        inputs_template=t5_inputs_template("wnli", ["sentence1", "sentence2"]),
        label_names=("not_entailment", "entailment"), metric_names=("accuracy",),
        num_examples={"train": 635, "validation": 71, "test": 146},
        description="WNLI: Winograd as entailment (accuracy)"),
    TextTaskSpec(
        name="glue_ax", source=f"glue/ax:{GLUE_VERSION}", splits=("test",),
        inputs_template=t5_inputs_template("mnli", ["hypothesis", "premise"]),
        label_names=_NLI, metric_names=("matthews_corrcoef",),
        num_examples={"test": 1104},
        description="GLUE diagnostics (AX), cast as MNLI; test only (R3 = MCC)"),
)

for _spec in GLUE_SPECS:
  registry.register_text_task(_spec)
