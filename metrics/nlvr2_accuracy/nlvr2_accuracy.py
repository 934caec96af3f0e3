"""NLVR2 accuracy and consistency as an offline `evaluate` module."""

from itertools import product

import datasets
import evaluate

from oscar_hf.metrics import nlvr2_accuracy


# Models predict 0/1 and the NLVR2 files spell labels "True"/"False": each column may come in either form
# (evaluate picks the first declaration the inputs fit).
_LABEL_FORMS = (datasets.Value("int64"), datasets.Value("string"))
_FEATURES = [
    datasets.Features({"predictions": predictions, "references": references})
    for predictions, references in product(_LABEL_FORMS, _LABEL_FORMS)
]


_DESCRIPTION = """
NLVR2 accuracy (fraction of (sentence, image pair) examples labelled correctly) and consistency
(fraction of unique sentences whose every image pair is labelled correctly; sentences are read from
the example identifiers 'split-set-pair-sentence', or given as groups).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int` or `str`): predicted label per example (1 = True, 0 = False, or "True"/"False").
    references (`list` of `int` or `str`): gold label per example, as 0/1 or spelled as in the NLVR2 files
        ("True"/"False").
    identifiers (`list` of `str`, optional): NLVR2 identifiers such as "dev-850-2-0", for consistency.
    groups (`list`, optional): sentence id per example, instead of identifiers.
Returns:
    accuracy (`float`) and, with identifiers or groups, consistency (`float`), in [0, 1].
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("./metrics/nlvr2_accuracy")  # doctest: +SKIP
    >>> metric.compute(predictions=[1, 0], references=[1, 1], identifiers=["dev-1-0-0", "dev-1-1-0"])  # doctest: +SKIP
    {'accuracy': 0.5, 'consistency': 0.0}
"""

_CITATION = """
@inproceedings{suhr2019corpus,
  title={A Corpus for Reasoning about Natural Language Grounded in Photographs},
  author={Suhr, Alane and Zhou, Stephanie and Zhang, Ally and Zhang, Iris and Bai, Huajun and Artzi, Yoav},
  booktitle={ACL},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Nlvr2Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=["https://lil.nlp.cornell.edu/nlvr/"],
        )

    def _compute(self, predictions, references, identifiers=None, groups=None):
        # nlvr2_accuracy maps every spelling to 1/0 with `nlvr2_label` (and refuses anything else).
        return nlvr2_accuracy(predictions, references, identifiers=identifiers, groups=groups)
