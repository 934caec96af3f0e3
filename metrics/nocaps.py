"""NoCaps validation scores by domain (in / near / out / entire), from the public val annotations.

The EvalAI server scores NoCaps (val and test) as COCO captioning on four image subsets: in-domain
(only COCO classes), near-domain (COCO and novel classes), out-domain (only novel classes) and the
entire split. Each subset is scored on its own (CIDEr's document frequencies come from that subset's
references), with BLEU-1..4, METEOR, ROUGE-L, CIDEr and SPICE. Locally that needs the public
`nocaps_val_4500_captions.json` (COCO-style `images` with `id`, `open_images_id`, `domain`, and
`annotations` with `image_id`, `caption`; about ten references per image). Test scores come only
from the server (`oscar_hf.metrics.submissions.write_nocaps_submission`).

Example:
    >>> from oscar_hf.metrics.nocaps import nocaps_scores
    >>> annotations = {
    ...     "images": [{"id": 0, "open_images_id": "a1", "domain": "in-domain"},
    ...                {"id": 1, "open_images_id": "b2", "domain": "out-domain"}],
    ...     "annotations": [{"image_id": 0, "caption": "a dog on the grass"},
    ...                     {"image_id": 1, "caption": "a jellyfish in the sea"}]}
    >>> scores = nocaps_scores({0: "a dog on the grass", 1: "a jellyfish in the sea"}, annotations, backend="python")
    >>> round(scores["in-domain_Bleu_1"], 3), round(scores["Bleu_1"], 3)
    (1.0, 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .captioning import coco_caption_scores


DOMAINS = ("in-domain", "near-domain", "out-domain")


@dataclass
class NocapsImage:
    image_id: int
    open_images_id: str
    domain: str
    references: list[str] = field(default_factory=list)


def read_nocaps_annotations(annotations: str | os.PathLike | Mapping) -> dict[int, NocapsImage]:
    """nocaps id -> image (Open Images id, domain, references) from the val captions JSON."""
    if not isinstance(annotations, Mapping):
        path = Path(annotations)
        if not path.is_file():
            raise FileNotFoundError(
                f"NoCaps annotations {str(path)!r} do not exist; pass nocaps_val_4500_captions.json."
            )
        annotations = json.loads(path.read_text(encoding="utf-8"))
    if "images" not in annotations or "annotations" not in annotations:
        raise ValueError(
            "NoCaps annotations need 'images' (with 'domain') and 'annotations'; pass nocaps_val_4500_captions.json "
            "(the image info JSON has no captions)."
        )
    images = {}
    for entry in annotations["images"]:
        domain = entry.get("domain")
        if domain not in DOMAINS:
            raise ValueError(f"NoCaps image {entry.get('id')!r} has domain {domain!r}; expected one of {DOMAINS}.")
        images[int(entry["id"])] = NocapsImage(int(entry["id"]), str(entry.get("open_images_id", "")), domain)
    for caption in annotations["annotations"]:
        image_id = int(caption["image_id"])
        if image_id not in images:
            raise ValueError(f"NoCaps caption of image {image_id} refers to no entry of 'images'.")
        images[image_id].references.append(caption["caption"])
    return images


def nocaps_scores(
    predictions: Mapping | Sequence[Mapping],
    annotations: str | os.PathLike | Mapping,
    *,
    backend: str = "auto",
    spice: bool | None = None,
) -> dict[str, float]:
    """COCO caption metrics per NoCaps domain and overall.

    Args:
        predictions: nocaps id (or Open Images id) -> caption, or the submission list
            `[{"image_id", "caption"}]`. Every annotated image needs one.
        annotations: the val captions JSON (path or parsed).
        backend, spice: as `coco_caption_scores`.

    Returns:
        The entire split's metrics under their plain names ("CIDEr", "Bleu_4", ...) and each domain's
        as "in-domain_CIDEr", "near-domain_CIDEr", "out-domain_CIDEr", ...
    """
    images = read_nocaps_annotations(annotations)
    by_key = _prediction_map(predictions)
    by_open_images = {image.open_images_id: image_id for image_id, image in images.items()}
    captions: dict[int, str] = {}
    for key, caption in by_key.items():
        image_id = _resolve(key, images, by_open_images)
        captions[image_id] = caption
    missing = [image_id for image_id in images if image_id not in captions]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(images)} NoCaps images have no prediction (e.g. nocaps id {missing[0]}); "
            "caption the whole val split."
        )
    results: dict[str, float] = {}
    subsets = {"entire": list(images)} | {d: [i for i, im in images.items() if im.domain == d] for d in DOMAINS}
    for name, ids in subsets.items():
        if not ids:
            continue
        scores = coco_caption_scores(
            [captions[i] for i in ids], [images[i].references for i in ids], backend=backend, spice=spice
        )
        prefix = "" if name == "entire" else f"{name}_"
        results.update({f"{prefix}{metric}": value for metric, value in scores.items()})
    return results


def _prediction_map(predictions: Mapping | Sequence[Mapping]) -> dict:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    out = {}
    for entry in predictions:
        if not {"image_id", "caption"} <= set(entry):
            raise ValueError(f"prediction {entry!r} lacks image_id/caption; use the NoCaps submission format.")
        out[entry["image_id"]] = entry["caption"]
    return out


def _resolve(key, images: dict[int, NocapsImage], by_open_images: dict[str, int]) -> int:
    if str(key) in by_open_images:
        return by_open_images[str(key)]
    try:
        if int(key) in images:
            return int(key)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"prediction for {key!r}: neither a nocaps id nor an Open Images id of the annotations.")


__all__ = ["DOMAINS", "NocapsImage", "nocaps_scores", "read_nocaps_annotations"]
