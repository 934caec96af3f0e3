"""VQA accuracy (official rules) and the Oscar soft score as an offline `evaluate` module."""

import datasets
import evaluate

from oscar_hf.metrics import vqa_accuracy


_DESCRIPTION = """
VQA accuracy as the official VQA evaluation computes it: answers are normalised (punctuation, number
words to digits, articles, contractions) when annotators disagree, and a prediction scores
min(1, #matching annotators / 3) averaged over the 10 leave-one-annotator-out subsets.
`soft_score` is the target Oscar trains with and reports: 0 / 0.3 / 0.6 / 0.9 / 1 for 0 / 1 / 2 / 3 / >=4
annotators giving exactly the predicted answer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted answer for each question.
    references (`list` of `list` of `str`): the annotators' answers for each question (10 in VQA v2).
Returns:
    accuracy (`float`): mean official VQA accuracy in [0, 1] (x100 for the leaderboard number).
    soft_score (`float`): mean Oscar soft score in [0, 1].
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("./metrics/vqa_accuracy")  # doctest: +SKIP
    >>> metric.compute(predictions=["two"], references=[["2"] * 3 + ["3"] * 7])  # doctest: +SKIP
    {'accuracy': 0.9, 'soft_score': 0.0}
"""

_CITATION = """
@inproceedings{goyal2017making,
  title={Making the V in VQA Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references):
        return vqa_accuracy(predictions, references)
