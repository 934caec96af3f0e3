"""Task builders: join annotations with region features and tags into rows of an explicit schema.

Each builder plans its input units per split (images, questions, pairs, or corpus rows) and turns
a slice of units into rows; :func:`oscar_hf.data.writer.build_dataset` shards, parallelises and
resumes the work. Build a dataset in Python with::

    regions = TsvRegionSource("train.feature.tsv", labels="train.label.tsv")
    builder = VQABuilder(regions, {"train": ("questions.json", "annotations.json")})
    build_dataset(builder, "vqa_parquet")
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from datasets import Features

from . import schema
from .annotations import (
    CaptionImage,
    CorpusSpec,
    gqa_vocabulary,
    read_captions,
    read_gqa,
    read_karpathy,
    read_nlvr2,
    read_vqa,
    vqa_targets,
    vqa_vocabulary,
)
from .errors import BadRowError, RowErrorPolicy, logger
from .regions import BOX_DIMS, RegionRecord, RegionSource, TsvRegionSource
from .tsv import TsvFile


def describe_source(source: RegionSource) -> dict:
    """Stable description of a region source, part of the build plan checked on resume."""
    describe = getattr(source, "describe", None)
    return describe() if callable(describe) else {"type": type(source).__name__}


class _RegionTask:
    """Shared join logic: image id -> key in the feature files -> RegionRecord (small LRU cache)."""

    name = "base"

    def __init__(self, regions: RegionSource, feature_dim: int = 2054, image_key_template: str = "{id}") -> None:
        self.regions = regions
        self.feature_dim = feature_dim
        self.image_key_template = image_key_template
        self._cache: OrderedDict[str, RegionRecord] = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def image_key(self, image_id) -> str:
        try:
            return self.image_key_template.format(id=image_id)
        except ValueError:
            # Karpathy ids arrive as strings; a numeric template such as {id:012d} needs the int.
            if isinstance(image_id, str) and image_id.isdigit():
                return self.image_key(int(image_id))
            raise self._template_error(image_id) from None
        except (IndexError, KeyError):
            raise self._template_error(image_id) from None

    def _template_error(self, image_id) -> ValueError:
        return ValueError(
            f"--image-key-template {self.image_key_template!r} cannot format id {image_id!r}. "
            "Fix: use a template with one {id} field, e.g. 'COCO_val2014_{id:012d}'."
        )

    def lookup(self, image_id, where: str, size: tuple[int | None, int | None] = (None, None)) -> RegionRecord:
        """The regions of `image_id`; an id without features raises naming the annotation entry."""
        key = self.image_key(image_id)
        record = self._cache.get(key)
        if record is None:
            record = self.regions.get(key)
            if record is None:
                raise BadRowError(
                    "missing_features",
                    where,
                    None,
                    key,
                    "the annotation refers to an image with no row in the feature files "
                    f"({describe_source(self.regions).get('features', 'regions')}).",
                    "pass the feature files of this split, check --image-key-template, "
                    "or pass --skip-bad-rows to skip and count such annotations.",
                )
            self._cache[key] = record
            if len(self._cache) > 8:
                self._cache.popitem(last=False)
        return _with_size(record, *size)

    def _common(self) -> dict:
        return {
            "regions": describe_source(self.regions),
            "feature_dim": self.feature_dim,
            "image_key_template": self.image_key_template,
        }

    def rows(self, units: Sequence, policy: RowErrorPolicy) -> Iterator[dict]:
        for unit in units:
            try:
                yield from self.unit_rows(unit)
            except BadRowError as error:
                policy.handle(error)

    def unit_rows(self, unit) -> Iterator[dict]:
        raise NotImplementedError


def _with_size(record: RegionRecord, width: int | None, height: int | None) -> RegionRecord:
    """Fill an unknown image size from the annotations (COCO JSONs carry it) and derive the boxes."""
    if record.image_width or not width or not height:
        return record
    boxes = record.boxes
    if record.features.shape[1] >= BOX_DIMS and len(record.features):
        boxes = record.features[:, -BOX_DIMS:-2] * np.array([width, height, width, height], dtype=np.float32)
    return RegionRecord(
        record.image_id, record.features, boxes, width, height, list(record.tags), list(record.tag_scores)
    )


# ---------------------------------------------------------------------------------------------


class CaptionBuilder(_RegionTask):
    """Image captioning (COCO Karpathy, Flickr30k, VinVL caption JSONs, or any captions + regions).

    Args:
        regions: where the region features and tags come from.
        captions: caption files; a Karpathy `dataset_*.json` gives train (with restval), val and
            test, other formats go to the split given as `(path, split)`.
        rows: "caption" (one row per caption, the training layout), "image" (one row per image with
            all references, the evaluation layout), or "auto" (caption rows for train, image rows
            for the other splits).
    """

    name = "caption"

    def __init__(
        self,
        regions: RegionSource,
        captions: Sequence[str | Path | tuple[str | Path, str]],
        rows: str = "auto",
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        if rows not in ("auto", "caption", "image"):
            raise ValueError(f"rows must be 'auto', 'caption' or 'image', got {rows!r}.")
        self.caption_files = [item if isinstance(item, tuple) else (item, None) for item in captions]
        self.row_layout = rows

    def features(self) -> Features:
        return schema.caption_schema(self.feature_dim)

    def describe(self) -> dict:
        files = [[str(path), split] for path, split in self.caption_files]
        return {**self._common(), "captions": files, "rows": self.row_layout}

    def plan(self) -> dict[str, list]:
        splits: dict[str, list] = {}
        for path, split in self.caption_files:
            for name, images in read_captions(path, split).items():
                per = self.row_layout if self.row_layout != "auto" else ("caption" if name == "train" else "image")
                splits.setdefault(name, []).extend((image, per) for image in images)
        return splits

    def unit_rows(self, unit: tuple[CaptionImage, str]) -> Iterator[dict]:
        image, per = unit
        record = self.lookup(image.image_id, image.where, (image.width, image.height))
        regions = record.as_columns()
        if per == "image":
            first = image.captions[0] if image.captions else ""
            yield {**regions, "caption_id": -1, "caption": first, "references": image.captions}
            return
        for caption_id, caption in zip(image.caption_ids, image.captions):
            yield {**regions, "caption_id": caption_id, "caption": caption, "references": image.captions}


class RetrievalBuilder(_RegionTask):
    """Image-text retrieval on a Karpathy split file: train, val, test_5k and test_1k.

    `test_5k` holds the 5,000 Karpathy test images with `fold_1k` = position // 1000, so the 5-fold
    1K protocol averages over folds 0-4; `test_1k` is fold 0, or the images listed in
    `test_1k_keys` (one image id per line, e.g. the original `test_img_keys_1k.tsv`).
    `fold_size` exists for small test sets; keep 1000 for the COCO protocols.
    """

    name = "retrieval"

    def __init__(
        self,
        regions: RegionSource,
        karpathy: str | Path,
        test_1k_keys: str | Path | None = None,
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
        fold_size: int = 1000,
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        self.fold_size = fold_size
        self.karpathy = Path(karpathy)
        self.test_1k_keys = Path(test_1k_keys) if test_1k_keys is not None else None

    def features(self) -> Features:
        return schema.retrieval_schema(self.feature_dim)

    def describe(self) -> dict:
        keys = str(self.test_1k_keys) if self.test_1k_keys else None
        return {**self._common(), "karpathy": str(self.karpathy), "test_1k_keys": keys, "fold_size": self.fold_size}

    def plan(self) -> dict[str, list]:
        splits = read_karpathy(self.karpathy)
        test = splits.get("test", [])
        plan = {name: [(image, -1) for image in images] for name, images in splits.items() if name != "test"}
        plan["test_5k"] = [(image, position // self.fold_size) for position, image in enumerate(test)]
        plan["test_1k"] = self._test_1k(test)
        return plan

    def _test_1k(self, test: list[CaptionImage]) -> list:
        if self.test_1k_keys is None:
            return [(image, 0) for image in test[: self.fold_size]]
        if not self.test_1k_keys.is_file():
            raise FileNotFoundError(f"--test-1k-keys {self.test_1k_keys} does not exist. Fix: check the path.")
        keys = [line.split("\t")[0].strip() for line in self.test_1k_keys.read_text().splitlines() if line.strip()]
        by_id = {image.image_id: image for image in test}
        missing = [key for key in keys if key not in by_id]
        if missing:
            raise ValueError(
                f"{self.test_1k_keys}: {len(missing)} image ids are not Karpathy test images (first {missing[0]!r}). "
                "Fix: pass the key list that belongs to this split file."
            )
        return [(by_id[key], 0) for key in keys]

    def unit_rows(self, unit: tuple[CaptionImage, int]) -> Iterator[dict]:
        image, fold = unit
        record = self.lookup(image.image_id, image.where, (image.width, image.height))
        yield {**record.as_columns(), "captions": image.captions, "caption_ids": image.caption_ids, "fold_1k": fold}


class VQABuilder(_RegionTask):
    """VQA v2 with Oscar's 3129-answer soft-score targets.

    Args:
        splits: `{split: (questions.json, annotations.json or None)}`.
        answer_vocab: the answer list (index = label id). When None it is built from the
            annotations of all given splits with `answer_min_count` (9 gives the 3129 answers
            from train2014 + val2014). Pass the checkpoint's vocabulary to keep its label order.
    """

    name = "vqa"

    def __init__(
        self,
        regions: RegionSource,
        splits: dict[str, tuple[str | Path, str | Path | None]],
        answer_vocab: list[str] | None = None,
        answer_min_count: int = 9,
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        self.split_files = {name: (Path(q), Path(a) if a else None) for name, (q, a) in splits.items()}
        self._examples = {name: read_vqa(q, a) for name, (q, a) in self.split_files.items()}
        if answer_vocab is None:
            answer_vocab = vqa_vocabulary([ex for exs in self._examples.values() for ex in exs], answer_min_count)
            logger.info(
                "built a VQA answer vocabulary of %d answers (min count %d)", len(answer_vocab), answer_min_count
            )
        if not answer_vocab:
            raise ValueError(
                "the VQA answer vocabulary is empty. Fix: pass --answer-vocab or annotations with answers."
            )
        self.answer_vocab = list(answer_vocab)
        self.label_of = {answer: index for index, answer in enumerate(self.answer_vocab)}

    def features(self) -> Features:
        return schema.vqa_schema(self.feature_dim, len(self.answer_vocab))

    def describe(self) -> dict:
        files = {name: [str(q), str(a)] for name, (q, a) in self.split_files.items()}
        return {**self._common(), "splits": files, "num_answers": len(self.answer_vocab)}

    def plan(self) -> dict[str, list]:
        return self._examples

    def unit_rows(self, example: dict) -> Iterator[dict]:
        record = self.lookup(example["image_id"], example["_where"])
        labels, scores = vqa_targets(example["answers"], self.label_of)
        dense = np.zeros(len(self.answer_vocab), dtype=np.float32)
        dense[labels] = scores
        fields = {key: value for key, value in example.items() if not key.startswith("_") and key != "image_id"}
        yield {**record.as_columns(), **fields, "answer_labels": labels, "answer_scores": scores, "labels": dense}


class GQABuilder(_RegionTask):
    """GQA questions with one answer id per question (1853 answers in Oscar's vocabulary)."""

    name = "gqa"

    def __init__(
        self,
        regions: RegionSource,
        splits: dict[str, str | Path],
        answer_vocab: list[str] | None = None,
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        self.split_files = {name: Path(path) for name, path in splits.items()}
        self._examples = {name: read_gqa(path) for name, path in self.split_files.items()}
        if answer_vocab is None:
            answer_vocab = gqa_vocabulary([ex for exs in self._examples.values() for ex in exs])
        self.answer_vocab = list(answer_vocab)
        self.label_of = {answer: index for index, answer in enumerate(self.answer_vocab)}
        unknown = sum(1 for exs in self._examples.values() for ex in exs if ex["answer"] not in self.label_of)
        if unknown:
            logger.warning("GQA: %d questions have no answer in the vocabulary; their labels are -100", unknown)

    def features(self) -> Features:
        return schema.gqa_schema(self.feature_dim)

    def describe(self) -> dict:
        files = {name: str(path) for name, path in self.split_files.items()}
        return {**self._common(), "splits": files, "num_answers": len(self.answer_vocab)}

    def plan(self) -> dict[str, list]:
        return self._examples

    def unit_rows(self, example: dict) -> Iterator[dict]:
        record = self.lookup(example["image_id"], example["_where"])
        fields = {key: value for key, value in example.items() if not key.startswith("_") and key != "image_id"}
        yield {**record.as_columns(), **fields, "labels": self.label_of.get(example["answer"], -100)}


class NLVR2Builder(_RegionTask):
    """NLVR2: each row pairs a sentence with the regions of its left and right images."""

    name = "nlvr2"

    def __init__(
        self,
        regions: RegionSource,
        splits: dict[str, str | Path],
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        self.split_files = {name: Path(path) for name, path in splits.items()}

    def features(self) -> Features:
        return schema.nlvr2_schema(self.feature_dim)

    def describe(self) -> dict:
        return {**self._common(), "splits": {name: str(path) for name, path in self.split_files.items()}}

    def plan(self) -> dict[str, list]:
        return {name: read_nlvr2(path) for name, path in self.split_files.items()}

    def unit_rows(self, example: dict) -> Iterator[dict]:
        left = self.lookup(example["left_image_id"], example["_where"])
        right = self.lookup(example["right_image_id"], example["_where"])
        yield {
            "identifier": example["identifier"],
            "sentence": example["sentence"],
            "labels": example["labels"],
            **left.as_columns("left_"),
            **right.as_columns("right_"),
        }


# ---------------------------------------------------------------------------------------------


class CorpusRegions:
    """Region sources of an Oscar+ corpus, one per (dataset, chunk), opened on first use.

    Feature files are `<feature_dir>[/<chunk>]/features.tsv` and labels
    `<label_dir>[/<chunk>]/predictions_gt.tsv` (or `predictions.tsv`); a chunk is the second
    `_`-separated part of the image key when a folder of that name exists.
    """

    def __init__(self, spec: CorpusSpec, feature_dim: int = 2054, use_key_index: bool = True) -> None:
        self.spec = spec
        self.feature_dim = feature_dim
        self.use_key_index = use_key_index
        self._sources: dict[tuple[str, str], TsvRegionSource] = {}
        self._answers: dict[tuple[str, str], TsvFile | None] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sources"], state["_answers"] = {}, {}
        return state

    def split_key(self, image_key: str, where: str) -> tuple[str, str, str]:
        """`coco_123` -> ("coco", "", "123"); `googlecc_0_456` -> ("googlecc", "0", "456")."""
        dataset, _, rest = image_key.partition("_")
        if dataset not in self.spec.feature_dirs or not rest:
            raise BadRowError(
                "corpus",
                where,
                None,
                image_key,
                f"image key must be <dataset>[_<chunk>]_<id> with a dataset in the YAML "
                f"({sorted(self.spec.feature_dirs)}).",
                "add the dataset to image_feature_path/image_label_path in the corpus YAML.",
            )
        chunk, _, image_id = rest.partition("_")
        if image_id and (self.spec.feature_dirs[dataset] / chunk).is_dir():
            return dataset, chunk, image_id
        return dataset, "", rest

    def source(self, dataset: str, chunk: str) -> TsvRegionSource:
        key = (dataset, chunk)
        if key not in self._sources:
            feature_dir = self.spec.feature_dirs[dataset] / chunk
            label_dir = self.spec.label_dirs.get(dataset, feature_dir) / chunk
            labels = next(
                (
                    label_dir / name
                    for name in ("predictions_gt.tsv", "predictions.tsv")
                    if (label_dir / name).is_file()
                ),
                None,
            )
            key_index = feature_dir / "imageid2idx.json"
            self._sources[key] = TsvRegionSource(
                feature_dir / "features.tsv",
                labels=labels,
                feature_dim=self.feature_dim,
                feature_key_index=key_index if self.use_key_index and key_index.is_file() else None,
            )
        return self._sources[key]

    def answers(self, dataset: str, chunk: str) -> TsvFile | None:
        """The dataset's `QA_fileB.tsv` (`[qa_id, {"labels": [answers]}]`), if it has one."""
        key = (dataset, chunk)
        if key not in self._answers:
            label_dir = self.spec.label_dirs.get(dataset, self.spec.feature_dirs[dataset])
            candidates = [label_dir / chunk / "QA_fileB.tsv", label_dir / "QA_fileB.tsv"]
            found = next((path for path in candidates if path.is_file()), None)
            self._answers[key] = TsvFile(found) if found is not None else None
        return self._answers[key]

    def describe(self) -> dict:
        return {
            "corpus_yaml": str(self.spec.yaml_path),
            "features": {name: str(path) for name, path in self.spec.feature_dirs.items()},
            "labels": {name: str(path) for name, path in self.spec.label_dirs.items()},
        }


class PretrainCorpusBuilder:
    """Oscar / Oscar+ pre-training triples from a corpus YAML and its corpus TSV.

    Corpus rows are `[img_key, label_key, text_a]`. Every row gets the image's tags from the label
    files; `text_b` is the tag string for caption rows and, for QA rows (a `qa` part in
    `label_key`, ending in `_<qa_id>`), the answers from `QA_fileB.tsv`. Units are corpus row numbers (a lazy `range`), so corpora larger
    than memory shard without loading the corpus file.
    """

    name = "pretrain"

    def __init__(self, spec: CorpusSpec, feature_dim: int = 2054, use_key_index: bool = True) -> None:
        self.spec = spec
        self.feature_dim = feature_dim
        self.regions = CorpusRegions(spec, feature_dim, use_key_index)
        self._corpus: TsvFile | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_corpus"] = None
        return state

    @property
    def corpus(self) -> TsvFile:
        if self._corpus is None:
            self._corpus = TsvFile(self.spec.corpus_file)
        return self._corpus

    def features(self) -> Features:
        return schema.pretrain_schema(self.feature_dim)

    def describe(self) -> dict:
        return {**self.regions.describe(), "corpus_file": str(self.spec.corpus_file), "feature_dim": self.feature_dim}

    def plan(self) -> dict[str, Sequence]:
        return {"train": range(len(self.corpus))}

    def rows(self, units: Sequence[int], policy: RowErrorPolicy) -> Iterator[dict]:
        for index in units:
            try:
                yield self._row(index)
            except BadRowError as error:
                policy.handle(error)

    def _row(self, index: int) -> dict:
        columns = self.corpus.read(index)
        where = f"{self.spec.corpus_file}, line {index + 1}"
        if len(columns) != 3:
            raise BadRowError(
                "columns",
                self.spec.corpus_file,
                index + 1,
                columns[0],
                f"corpus rows have 3 columns [img_key, label_key, text_a], got {len(columns)}.",
                "",
            )
        image_key, label_key, text_a = columns
        dataset, chunk, image_id = self.regions.split_key(image_key, where)
        record = self.regions.source(dataset, chunk).get(image_id)
        if record is None:
            raise BadRowError(
                "missing_features",
                self.spec.corpus_file,
                index + 1,
                image_key,
                f"no row {image_id!r} in {self.spec.feature_dirs[dataset] / chunk / 'features.tsv'}.",
                "check the corpus YAML's image_feature_path, or pass --skip-bad-rows to skip and count the row.",
            )
        is_qa = "qa" in label_key.split("_")
        # As in the original triples: text_b is the answer for QA rows and the tag string otherwise.
        text_b = self._answer_text(dataset, chunk, label_key, index) if is_qa else " ".join(record.tags)
        return {
            **record.as_columns(),
            "source": dataset,
            "image_key": image_key,
            "label_key": label_key,
            "text_a": text_a,
            "text_b": text_b,
            "is_qa": is_qa,
        }

    def _answer_text(self, dataset: str, chunk: str, label_key: str, index: int) -> str:
        qa_id = label_key.rsplit("_", 1)[-1]
        answers = self.regions.answers(dataset, chunk)
        found = answers.get(qa_id) if answers is not None else None
        if found is None:
            raise BadRowError(
                "missing_answer",
                self.spec.corpus_file,
                index + 1,
                label_key,
                f"QA row {qa_id!r} has no answers in {dataset}'s QA_fileB.tsv.",
                "check the label folder of this dataset in the corpus YAML.",
            )
        columns, row = found
        try:
            cell = json.loads(columns[1])
        except (IndexError, json.JSONDecodeError) as error:
            raise BadRowError("json", answers.path, row + 1, qa_id, f"malformed answer cell ({error}).", "") from None
        return " ".join(str(answer) for answer in cell.get("labels", []))
