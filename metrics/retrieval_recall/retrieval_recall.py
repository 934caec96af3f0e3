"""Image-text retrieval Recall@K (COCO 1K / 5K, Flickr30K) as an offline `evaluate` module."""

import datasets
import evaluate

from oscar_hf.metrics import retrieval_recall


_DESCRIPTION = """
Image-to-text (i2t) and text-to-image (t2i) Recall@K from an image x text score matrix: i2t ranks
all texts for each image and looks for the first correct one; t2i ranks all images for each text.
A correct item tied with wrong ones is ranked after them (ties="pessimistic") unless told otherwise.
COCO convention: texts ordered image by image, 5 per image. COCO 5K: the full matrix; COCO 1K:
num_folds=5 (five blocks of 1000 images, recalls averaged).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): row i holds the scores of image i against every text.
    captions_per_image (`int`, default 5): COCO layout, text j belongs to image j // captions_per_image.
    text_to_image (`list` of `int`, optional): the image index of every text, for any other layout.
    num_folds (`int`, default 1), ks (default (1, 5, 10)), ties ("pessimistic" or "optimistic").
Returns:
    i2t_R@K and t2i_R@K for each K (fractions in [0, 1]) and rsum, their sum.
    For a 5000 x 25000 matrix call `oscar_hf.metrics.retrieval_recall` directly: it takes the numpy
    or torch matrix without copying it into Arrow.
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("./metrics/retrieval_recall")  # doctest: +SKIP
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], captions_per_image=1, ks=[1])  # doctest: +SKIP
    {'i2t_R@1': 1.0, 't2i_R@1': 1.0, 'rsum': 2.0}
"""

_CITATION = """
@inproceedings{karpathy2015deep,
  title={Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author={Karpathy, Andrej and Fei-Fei, Li},
  booktitle={CVPR},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(
        self, predictions, captions_per_image=5, text_to_image=None, num_folds=1, ks=(1, 5, 10), ties="pessimistic"
    ):
        return retrieval_recall(
            predictions,
            captions_per_image=captions_per_image,
            text_to_image=text_to_image,
            num_folds=num_folds,
            ks=tuple(ks),
            ties=ties,
        )
