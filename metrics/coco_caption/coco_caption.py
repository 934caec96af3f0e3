"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) as an offline `evaluate` module."""

import datasets
import evaluate

from oscar_hf.metrics import coco_caption_scores


_DESCRIPTION = """
The COCO caption evaluation: captions are lower-cased and tokenised with the Stanford PTB tokenizer,
then scored by `pycocoevalcap` (BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D and, when its Stanford models
are installed, SPICE). The numbers equal `pycocoevalcap` called directly on the same captions.
Java is required for the tokenizer, METEOR and SPICE; without it (backend="auto") a pure-Python
tokeniser and scorers give BLEU, ROUGE-L and CIDEr-D only, with a warning. SPICE is never downloaded.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image (at least one).
    backend (`str`, default "auto"): "official" (needs Java), "python" (pure Python, no METEOR/SPICE)
        or "auto" (official when Java and pycocoevalcap are available).
    spice (`bool`, optional): None runs SPICE only if its models are installed; True requires them.
    cider_document_frequencies (path or `CiderDocumentFrequencies`, optional): CIDEr-D document
        frequencies to use instead of those of the evaluated references (e.g. training corpus).
Returns:
    Bleu_1, Bleu_2, Bleu_3, Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (floats; keys a backend cannot
    compute are absent). CIDEr is on the usual x10 scale (1.237 for "123.7").
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("./metrics/coco_caption")  # doctest: +SKIP
    >>> metric.compute(
    ...     predictions=["a dog runs on the grass", "a cat on a sofa"],
    ...     references=[["a dog running on grass", "a brown dog runs"], ["a cat sleeping on a couch"]],
    ... )  # doctest: +SKIP
"""

_CITATION = """
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Doll{\\'a}r, Piotr and Zitnick, C Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoCaption(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/tylin/coco-caption", "https://pypi.org/project/pycocoevalcap/"],
        )

    def _compute(self, predictions, references, backend="auto", spice=None, cider_document_frequencies=None):
        return coco_caption_scores(
            predictions,
            references,
            backend=backend,
            spice=spice,
            cider_document_frequencies=cider_document_frequencies,
        )
