"""Draw regions, tags (with their attributes) and a caption or answer on an image (PIL only), for users and docs.

`draw_regions` takes boxes and labels; `draw_detections` takes one detector record as the adapters
return it (a VinVL record adds `attributes`, drawn before the class name: "white fluffy dog 0.91").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont


PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def draw_regions(
    image: Image.Image,
    boxes: Sequence[Sequence[float]] | Any,
    tags: Sequence[str] | None = None,
    scores: Sequence[float] | Any = None,
    text: str | None = None,
    max_boxes: int | None = 20,
    line_width: int = 2,
    attributes: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """A copy of `image` with boxes (x1, y1, x2, y2 pixels), their tags/scores and `text` underneath.

    `attributes`: per box, attribute names drawn before its tag (VinVL's attribute head).

    Example:
        >>> from PIL import Image
        >>> out = draw_regions(Image.new("RGB", (64, 48)), [[4, 4, 30, 40]], ["dog"], [0.9], text="a dog")
        >>> out.width, out.height > 48  # the text band is added below the image
        (64, True)
    """
    boxes = [[float(v) for v in box] for box in (boxes.tolist() if hasattr(boxes, "tolist") else boxes)]
    scores = scores.tolist() if hasattr(scores, "tolist") else scores
    if tags is not None and len(tags) != len(boxes):
        raise ValueError(f"Got {len(tags)} tags for {len(boxes)} boxes; pass one tag per box.")
    if attributes is not None and len(attributes) != len(boxes):
        raise ValueError(f"Got {len(attributes)} attribute lists for {len(boxes)} boxes; pass one list per box.")
    font = ImageFont.load_default()
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for i, box in enumerate(boxes[:max_boxes]):
        color = PALETTE[i % len(PALETTE)]
        draw.rectangle(box, outline=color, width=line_width)
        described = " ".join([*(attributes[i] if attributes else []), tags[i] if tags else ""])
        label = " ".join(part for part in (described.strip(), f"{scores[i]:.2f}" if scores else "") if part)
        if label:
            left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
            draw.rectangle((left, top, right + 2, bottom), fill=color)
            draw.text((box[0] + 1, box[1]), label, fill="white", font=font)
    if not text:
        return canvas
    # The caption / answer goes on a white band below the image, so it never hides a region.
    band = draw.textbbox((0, 0), text, font=font)[3] + 8
    framed = Image.new("RGB", (canvas.width, canvas.height + band), "white")
    framed.paste(canvas, (0, 0))
    ImageDraw.Draw(framed).text((4, canvas.height + 4), text, fill="black", font=font)
    return framed


def draw_detections(
    image: Image.Image,
    record: Mapping[str, Any],
    text: str | None = None,
    max_boxes: int | None = 20,
    line_width: int = 2,
) -> Image.Image:
    """`draw_regions` for one detector record (`boxes`, `tags`, `scores` and, from VinVL, `attributes`).

    Example:
        >>> from PIL import Image
        >>> record = {"boxes": [[4, 4, 30, 40]], "tags": ["dog"], "scores": [0.9], "attributes": [["brown"]]}
        >>> draw_detections(Image.new("RGB", (64, 48)), record).size
        (64, 48)
    """
    if not isinstance(record, Mapping) or record.get("boxes") is None:
        found = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(
            f"record is {found}; expected a detector record with 'boxes' (and 'tags', 'scores', 'attributes'), "
            "as detector(images)[i] returns it."
        )
    return draw_regions(
        image,
        record["boxes"],
        record.get("tags"),
        record.get("scores"),
        text=text,
        max_boxes=max_boxes,
        line_width=line_width,
        attributes=record.get("attributes"),
    )


__all__ = ["draw_detections", "draw_regions"]
