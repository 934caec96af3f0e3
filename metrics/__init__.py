"""Evaluation for Oscar / VinVL tasks, identical to the official scorers (installed as `oscar_hf.metrics`).

The `evaluate` modules in this folder (`metrics/<name>/<name>.py`, loaded with
`evaluate.load("./metrics/<name>")` or `load_metric(name)`) are thin wrappers around the code here,
which recipes (SCST rewards, validation loops) also use directly:

- `captioning`: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (+ SPICE) after PTB tokenisation; CIDEr-D
  document frequencies for SCST;
- `vqa`: VQA accuracy with the official answer normalisation, and Oscar's soft training targets;
- `retrieval`: recall at 1/5/10 over a score matrix (COCO 1K folds and 5K);
- `nlvr2`: accuracy and consistency;
- `nocaps`: NoCaps val scores by domain (in / near / out / entire);
- `submissions`: prediction files in the test servers' formats (VQA v2, GQA, NLVR2, NoCaps), checked;
- `common`: where the `evaluate` modules live and which official scorers can run here.
"""

# The folder is installed as `oscar_hf.metrics`; imported under its folder name (e.g. from the repository root) it
# would load a second, different copy of every class.
if __name__ != "oscar_hf.metrics":
    raise ImportError(
        f"{__name__} is the source folder of `oscar_hf.metrics`: `import oscar_hf.metrics` instead (pip install -e .)."
    )


from .captioning import (
    CAPTION_METRIC_NAMES,
    CiderD,
    CiderDocumentFrequencies,
    bleu_score,
    coco_caption_scores,
    ptb_tokenize,
    rouge_l_score,
    simple_tokenize,
)
from .common import METRIC_NAMES, JavaStatus, java_status, load_metric, metric_path, spice_models_available
from .nlvr2 import nlvr2_accuracy, nlvr2_label, nlvr2_sentence_id
from .nocaps import nocaps_scores
from .retrieval import retrieval_ranks, retrieval_recall, retrieval_recall_by_fold
from .vqa import normalize_vqa_answer, soft_score_for_count, vqa_accuracy, vqa_answer_accuracy, vqa_soft_score


__all__ = [
    "CAPTION_METRIC_NAMES",
    "METRIC_NAMES",
    "CiderD",
    "CiderDocumentFrequencies",
    "JavaStatus",
    "bleu_score",
    "coco_caption_scores",
    "java_status",
    "load_metric",
    "metric_path",
    "nlvr2_accuracy",
    "nlvr2_label",
    "nlvr2_sentence_id",
    "nocaps_scores",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "retrieval_ranks",
    "retrieval_recall",
    "retrieval_recall_by_fold",
    "rouge_l_score",
    "simple_tokenize",
    "spice_models_available",
    "vqa_accuracy",
    "vqa_answer_accuracy",
    "soft_score_for_count",
    "vqa_soft_score",
]
