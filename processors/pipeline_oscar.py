"""Pipelines for Oscar / Oscar+ (VinVL): raw image in, caption / answer / match score out.

- `OscarCaptioningPipeline` (task `oscar-captioning`): image -> `[{"generated_text": ...}]`.
- `OscarVQAPipeline` (task `oscar-vqa`): image + question -> `[{"answer": ..., "score": ...}]`, top-k.
- `OscarRetrievalPipeline` (task `oscar-retrieval`): image x candidate texts -> `[{"text": ...,
  "score": p(match)}]`, ranked.

Images are paths, `http(s)://` URLs, PIL images or numpy arrays (grayscale, RGBA, 16-bit and float
images are converted to 8-bit RGB), or precomputed regions: a dict with `features` (N, D) and, when
D is the region-feature width, `boxes` (N, 4 pixel `x1, y1, x2, y2`) and `image_size`
(height, width), plus optional `tags`. Images go through an object detector that the processor
config names (`detector_name_or_path`, loaded lazily on the first image; a relative path is
resolved against the model folder) or that `pipeline(..., detector=...)` gives; precomputed
regions need no detector. A folder that carries a converted VinVL detector in `detector/` (the
converters' `--detector DIR`) runs it by default: the detector whose 2048-d features and tags the
released Oscar+ / VinVL checkpoints read, so `pipeline(model=folder, trust_remote_code=True)("photo.jpg")`
needs nothing else.

An image on which the detector keeps no box runs on the text alone (no tags, no regions) with a
warning; set `detector_min_boxes` >= 1 in the processor config (the default, 10) to always keep
the best boxes.

This file is a flat remote-code file: exported folders carry it next to `config.json` with
`detection_oscar.py`, `processing_oscar.py` and `image_processing_oscar.py`, and `config.json`
lists the task under `custom_pipelines`, so `pipeline(model=folder, trust_remote_code=True)`
loads it where this package is not installed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.pipelines.base import ChunkPipeline, Pipeline

from .detection_oscar import load_detector, load_rgb_image


def _is_regions(value: Any) -> bool:
    return isinstance(value, Mapping) and "features" in value


def _is_single_image(value: Any) -> bool:
    """One image (path, URL, PIL image, array, precomputed regions dict), as opposed to a list of them."""
    return isinstance(value, (str, os.PathLike, Image.Image, np.ndarray, Mapping)) or torch.is_tensor(value)


class _OscarPipelineMixin:
    """Shared by the three pipelines: processor checks, lazy detector, image -> regions."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False

    def _setup(self, detector: Any) -> None:
        if self.processor is None or not hasattr(self.processor, "caption_prompt"):
            raise ValueError(
                f"The {self.task or 'Oscar'} pipeline needs an OscarProcessor (got {type(self.processor).__name__}); "
                "save one next to the model (export the folder with its processor) or pass processor=..."
            )
        if self.tokenizer is None:
            self.tokenizer = self.processor.tokenizer  # lets the base class pad batches (batch_size > 1)
        self._detector_spec = detector
        self._detector = detector if callable(detector) else None

    # -- detector ------------------------------------------------------------------------------------

    def _model_folder(self) -> str | None:
        return getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", None)

    def _detector_kwargs(self) -> dict[str, Any]:
        processor = self.processor
        return {
            "score_threshold": getattr(processor, "detector_score_threshold", 0.2),
            "min_boxes": getattr(processor, "detector_min_boxes", 10),
            "max_boxes": getattr(processor, "detector_max_boxes", 100),
            "nms_threshold": getattr(processor, "detector_nms_threshold", None),
            "device": self.device,
        }

    @property
    def detector(self) -> Any:
        """The detector (loaded on first use): `detector(list_of_pil_images) -> list of region dicts`."""
        if self._detector is None:
            self._detector = self._load_detector()
        return self._detector

    def _load_detector(self) -> Any:
        # The processor's own detector first (passed in, or loaded from the model folder's detector/);
        # then the reference in the processor config, resolved against the model folder.
        if self._detector_spec is None and getattr(self.processor, "has_detector", False):
            return self.processor.detector
        reference = self._detector_spec
        if reference is None:
            reference = getattr(self.processor, "detector_name_or_path", None)
        return load_detector(reference, model_folder=self._model_folder(), **self._detector_kwargs())

    # -- inputs --------------------------------------------------------------------------------------

    def _regions(self, image: Any, timeout: float | None) -> tuple[dict[str, Any], bool]:
        """One image -> (region dict, whether it is empty)."""
        if _is_regions(image):
            regions = dict(image)
        else:
            if isinstance(image, Mapping):
                raise ValueError(
                    f"Got a dict with keys {sorted(image)}; precomputed regions need 'features' (N, D) and, when D is "
                    "the region-feature width, 'boxes' (N, 4) and 'image_size' (height, width)."
                )
            regions = self.detector([load_rgb_image(image, timeout=timeout)])[0]
            if not isinstance(regions, Mapping) or "features" not in regions:
                found = sorted(regions) if isinstance(regions, Mapping) else type(regions).__name__
                raise ValueError(
                    f"The detector returned {found} for an image; expected a dict with 'features' (N, D), 'boxes' "
                    "(N, 4), 'image_size' (height, width) and 'tags'. Fix the detector's output."
                )
        count = len(regions["features"])
        if count == 0:
            warnings.warn(
                "The detector kept no region for this image, so the model reads the text alone (no tags, no "
                "regions). Lower detector_score_threshold or raise detector_min_boxes in the processor config.",
                UserWarning,
                stacklevel=3,
            )
            regions.setdefault("tags", [])
        return regions, count == 0

    def _cast(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Region features in the model's dtype (the other inputs are integer ids and masks)."""
        if "img_feats" in inputs:
            inputs["img_feats"] = inputs["img_feats"].to(self.model.dtype)
        return inputs


class OscarCaptioningPipeline(_OscarPipelineMixin, Pipeline):
    r"""Image captioning with an `OscarForImageCaptioning` model: image -> detector -> tags + regions -> caption.

    Call with one image or a list; returns per image a list of `{"generated_text": caption}` (one
    per returned sequence), like the built-in image-to-text pipeline.

    Generation options: `max_length`, `max_new_tokens`, `num_beams`, `num_return_sequences`,
    `original_decoding` (the original beam search), `generate_kwargs` (anything else `generate`
    takes); `timeout` for URLs.

    Example:
        >>> captioner = pipeline(model="path/to/oscar-captioning", trust_remote_code=True)  # doctest: +SKIP
        >>> captioner("photo.jpg", num_beams=5, max_length=20)  # doctest: +SKIP
        [{'generated_text': 'a cat sitting on a couch'}]
    """

    def __init__(self, *args: Any, detector: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup(detector)

    def _sanitize_parameters(
        self,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        num_return_sequences: int | None = None,
        original_decoding: bool | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(
                f"Unknown arguments {sorted(kwargs)} for the captioning pipeline; generation options go through "
                "max_length, max_new_tokens, num_beams, num_return_sequences, original_decoding or generate_kwargs."
            )
        forward = dict(generate_kwargs or {})
        for name, value in (
            ("max_length", max_length),
            ("max_new_tokens", max_new_tokens),
            ("num_beams", num_beams),
            ("num_return_sequences", num_return_sequences),
            ("original_decoding", original_decoding),
        ):
            if value is not None:
                forward[name] = value
        preprocess = {"timeout": timeout} if timeout is not None else {}
        return preprocess, forward, {}

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        """Captions `images` (one or a list); see the class doc for the options."""
        return super().__call__(images if _is_single_image(images) else list(images), **kwargs)

    def preprocess(self, image: Any, timeout: float | None = None) -> dict[str, Any]:
        regions, empty = self._regions(image, timeout)
        return dict(self.processor.caption_prompt(regions=[regions], allow_empty_regions=empty))

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        inputs = self._cast(dict(model_inputs))
        batch = inputs["input_ids"].shape[0]
        if "max_length" not in generate_kwargs and "max_new_tokens" not in generate_kwargs:
            # The caption must fit its slot before the tags (`max_caption_length`, 40 in the original, whose
            # decoding used max_gen_length 20); the library-wide default (20) may not.
            default = getattr(self.model.generation_config, "max_length", None) or 20
            generate_kwargs["max_length"] = min(default, int(self.model.config.max_caption_length))
        sequences = self.model.generate(**inputs, **generate_kwargs)
        if not torch.is_tensor(sequences):  # return_dict_in_generate=True
            sequences = sequences.sequences
        return {"sequences": sequences.reshape(batch, -1, sequences.shape[-1])}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, str]]:
        sequences = model_outputs["sequences"].reshape(-1, model_outputs["sequences"].shape[-1])
        texts = self.processor.batch_decode(sequences, skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


class OscarVQAPipeline(_OscarPipelineMixin, Pipeline):
    r"""Visual question answering with an `OscarForSequenceClassification` VQA/GQA head.

    `pipe(image, question="...")`, `pipe([image, ...], question=...)`, `pipe(image, question=[...])`
    or `pipe([{"image": ..., "question": ...}, ...])`. Returns per (image, question) the `top_k`
    (default 5) answers as `[{"answer": ..., "score": ...}]`, best first, like the built-in VQA
    pipeline. Scores are sigmoids for soft-score heads (`loss_type="bce"`, VQA v2) and softmax
    probabilities otherwise (GQA). A question that does not fit `max_seq_length` together with the
    tags is truncated (text and tags pop from the longer one, as the original) with a warning.
    """

    def __init__(self, *args: Any, detector: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup(detector)

    def _sanitize_parameters(
        self, top_k: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(f"Unknown arguments {sorted(kwargs)} for the VQA pipeline; it takes top_k and timeout.")
        postprocess = {}
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k={top_k}; expected at least 1 answer.")
            postprocess["top_k"] = int(top_k)
        return ({"timeout": timeout} if timeout is not None else {}), {}, postprocess

    def __call__(self, image: Any, question: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Answers `question` about `image` (see the class doc for the accepted combinations)."""
        if question is None:
            inputs = image if isinstance(image, Mapping) else list(image)  # {"image", "question"} dicts
        elif isinstance(question, str):
            inputs = (
                {"image": image, "question": question}
                if _is_single_image(image)
                else [{"image": i, "question": question} for i in image]
            )
        elif _is_single_image(image):
            inputs = [{"image": image, "question": q} for q in question]
        else:
            inputs = [{"image": i, "question": q} for i in image for q in question]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: Any, timeout: float | None = None) -> dict[str, Any]:
        if not isinstance(inputs, Mapping) or "question" not in inputs or "image" not in inputs:
            raise ValueError(
                f"Got {type(inputs).__name__} without a question; call pipe(image, question='...') or pass "
                "{'image': ..., 'question': ...} dicts."
            )
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question={question!r}; expected a non-empty string.")
        regions, empty = self._regions(inputs["image"], timeout)
        self._warn_if_truncated(question, regions.get("tags") or [])
        return dict(self.processor(question, regions=[regions], allow_empty_regions=empty))

    def _warn_if_truncated(self, text: str, tags: Any) -> None:
        tokenizer = self.processor.tokenizer
        tag_text = tags if isinstance(tags, str) else " ".join(tags)
        text_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        tag_tokens = len(tokenizer(tag_text, add_special_tokens=False)["input_ids"]) if tag_text.strip() else 0
        budget = self.processor.max_seq_length - (3 if tag_tokens else 2)
        if text_tokens + tag_tokens > budget:
            warnings.warn(
                f"The question ({text_tokens} tokens) and the object tags ({tag_tokens} tokens) do not fit "
                f"max_seq_length={self.processor.max_seq_length}; they are truncated (the longer one is cut first). "
                "Shorten the question, or raise max_seq_length in the processor config if the model was trained "
                "with longer inputs.",
                UserWarning,
                stacklevel=3,
            )

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        return {"logits": self.model(**self._cast(dict(model_inputs))).logits}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()
        probs = logits.sigmoid() if getattr(self.model.config, "loss_type", "ce") == "bce" else logits.softmax(-1)
        scores, ids = probs.topk(min(top_k, probs.numel()))
        id2label = self.model.config.id2label
        return [
            {"score": float(score), "answer": str(id2label.get(int(i), id2label.get(str(int(i)), int(i))))}
            for score, i in zip(scores.tolist(), ids.tolist())
        ]


class OscarRetrievalPipeline(_OscarPipelineMixin, ChunkPipeline):
    r"""Image-text matching with an `OscarForImageTextRetrieval` cross-encoder: images x texts -> p(match).

    `pipe(images=image, texts=[...])` returns the texts ranked for that image as
    `[{"text": ..., "score": ...}]` (best first, like zero-shot image classification's
    `{"label", "score"}`); `images=[...]` gives one ranked list per image. `top_k` keeps the best
    k. Every (image, text) pair is one forward of the cross-encoder; `batch_size` batches pairs.
    To rank images for one caption, pass the images with `texts=[caption]` and sort by score.
    """

    def __init__(self, *args: Any, detector: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup(detector)

    def _sanitize_parameters(
        self, texts: Any = None, top_k: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(
                f"Unknown arguments {sorted(kwargs)} for the retrieval pipeline; it takes texts, top_k and timeout."
            )
        preprocess = {"timeout": timeout} if timeout is not None else {}
        if texts is not None:
            preprocess["texts"] = texts
        return preprocess, {}, ({"top_k": int(top_k)} if top_k is not None else {})

    def __call__(self, images: Any = None, texts: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Scores every text of `texts` against each image of `images` (one image or a list)."""
        if images is None:
            raise ValueError("Pass images=... (one image or a list) and texts=[...] (the candidate captions).")
        if texts is None:
            raise ValueError("Pass texts=[...]: the candidate captions to score against each image.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"texts={texts!r}; expected one or more non-empty strings.")
        if not _is_single_image(images):
            images = list(images)
        return super().__call__(images, texts=texts, **kwargs)

    def preprocess(self, image: Any, texts: Sequence[str] = (), timeout: float | None = None) -> Any:
        regions, empty = self._regions(image, timeout)
        for index, text in enumerate(texts):
            inputs = dict(self.processor(text, regions=[regions], allow_empty_regions=empty))
            yield {"text": text, "is_last": index == len(texts) - 1, **inputs}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        text, is_last = model_inputs.pop("text"), model_inputs.pop("is_last")
        outputs = self.model(**self._cast(dict(model_inputs)))
        scores = getattr(outputs, "scores", None)
        if scores is None:  # a plain 2-way classifier: p(match) is the softmax of class 1
            scores = outputs.logits.float().softmax(-1)[:, 1]
        return {"text": text, "is_last": is_last, "score": scores}

    def postprocess(self, model_outputs: list[dict[str, Any]], top_k: int | None = None) -> list[dict[str, Any]]:
        ranked = sorted(
            ({"score": float(out["score"].reshape(-1)[0]), "text": out["text"]} for out in model_outputs),
            key=lambda item: -item["score"],
        )
        return ranked[:top_k] if top_k is not None else ranked


__all__ = ["OscarCaptioningPipeline", "OscarRetrievalPipeline", "OscarVQAPipeline"]
