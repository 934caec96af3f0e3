"""Image processor of the VinVL detector: pixels in, the exact input tensor of the original out.

The original transform (maskrcnn_benchmark `Resize` + `ToTensor` + `Normalize(to_bgr255)`):

1. resize so that the short side is `min_size` (600) unless the long side would exceed `max_size`
   (1000), in which case the short side becomes `round(max_size * short / long)`; the long side is
   then `int(short_target * long / short)` (truncated), and an image whose short side already has the
   target size is left alone. PIL bilinear on the 8-bit RGB image.
2. `/ 255`, channels reversed to BGR, `* 255`, minus the BGR pixel means, divided by the std (1).

Batching: by default every image is its own (1, 3, h, w) tensor and the detector runs one image per
forward, which is what the released VinVL features used (`TEST.IMS_PER_BATCH 1` per image). With
`pad_batch=True` the images are zero-padded bottom/right to a common size (rounded up to
`size_divisibility`) AFTER normalisation, as the original's `to_image_list`; the padding changes the
backbone output near the borders and therefore the detections (on the reference fixtures the three
images of a padded batch got 88 / 73 / 77 boxes instead of 86 / 89 / 75 one by one).

Accepted inputs and their documented conversions: file paths, PIL images, numpy arrays and torch tensors
(H x W, H x W x C channels last, or C x H x W channels first as torchvision reads images; C is 1, 3 or 4,
and a shape that fits both layouts is read as channels last). Grayscale is replicated to RGB; an alpha channel is dropped (PIL's
`convert("RGB")`, as the original); palette images are converted by PIL; 16-bit images are mapped to 8
bits by `round(v / 257)` (65535 -> 255); float arrays must hold values in [0, 1] and are mapped by
`round(v * 255)`. Empty images and images above `max_image_pixels` raise `ValueError`.

This file is flat remote code: it imports installed libraries only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


try:  # transformers >= 4.47 validates kwargs against a TypedDict; older releases have none.
    from transformers.processing_utils import ImagesKwargs
except ImportError:  # pragma: no cover - very old transformers
    from typing import TypedDict as _TypedDict

    class ImagesKwargs(_TypedDict, total=False):  # type: ignore[no-redef]
        pass


# Well above any photo (a 100-megapixel image resizes to 600 x 1000 like any other) and below what
# would exhaust memory before the resize.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


def resized_size(height: int, width: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """The original `Resize.get_size`: the `(height, width)` the detector sees (truncating, not rounding)."""
    size = min_size
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _describe(image: Any) -> str:
    shape = getattr(image, "shape", None)
    return f"{type(image).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}"


def _array_to_pil(array: np.ndarray, index: int) -> Image.Image:
    """A numpy image (H x W, H x W x 1/3/4 or 1/3/4 x H x W) as an 8-bit PIL image, with the documented conversions."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first (torchvision's layout) -> channels last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"images[{index}] is an array of shape {array.shape}; expected H x W (grayscale), H x W x 3/4 "
            "(RGB/RGBA, channels last) or 1/3/4 x H x W (channels first)."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"images[{index}] is empty (shape {array.shape}); expected an image with pixels.")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"images[{index}] holds NaN or inf; float images must hold values in [0, 1].")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"images[{index}] is a float array with values in [{array.min()}, {array.max()}]; "
                "float images must hold values in [0, 1] (pass uint8 for 0-255 data)."
            )
        array = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    else:
        raise ValueError(f"images[{index}] has dtype {array.dtype}; expected uint8, uint16, bool or float in [0, 1].")
    return Image.fromarray(np.ascontiguousarray(array))


def _open_path(path: str | os.PathLike, index: int) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"images[{index}] = '{path}' does not exist or is not a file; pass an image file path."
        )
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"images[{index}] = '{path}' is not an image PIL can read ({error}); pass a JPEG/PNG/... file."
        ) from error
    return image


def _pil_16bit_to_8bit(image: Image.Image) -> Image.Image:
    """PIL 16/32-bit integer modes ("I;16", "I") carry 16-bit data here: map to 8 bits like arrays."""
    array = np.asarray(image)
    if array.dtype != np.uint16:
        array = np.clip(array, 0, 65535).astype(np.uint16)
    return Image.fromarray(np.round(array.astype(np.float64) / 257.0).astype(np.uint8))


class VinVLImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of `VinVLImageProcessor` (declared so transformers 5 takes them in `from_pretrained` and saves them)."""

    min_size: int
    max_size: int | None
    pixel_mean: list[float]
    pixel_std: list[float]
    pad_batch: bool
    size_divisibility: int
    max_image_pixels: int


class VinVLImageProcessor(BaseImageProcessor):
    r"""Turns images into the VinVL detector's input (resize, BGR x 255 minus means).

    Args:
        min_size: target short side (600; `INPUT.MIN_SIZE_TEST`).
        max_size: bound of the long side (1000; `INPUT.MAX_SIZE_TEST`).
        pixel_mean: BGR means subtracted after scaling to 0-255 ([103.53, 116.28, 123.675]).
        pixel_std: BGR stds ([1, 1, 1]).
        pad_batch: False (default): one (1, 3, h, w) tensor per image, run one per forward (the released
            features' setting). True: one zero-padded (B, 3, H, W) batch as the original's `to_image_list`,
            which changes the detections of the smaller images (see the module docstring).
        size_divisibility: with `pad_batch`, round the padded size up to a multiple of this (0: none).
        max_image_pixels: larger images are refused (the resize would spend minutes and gigabytes first).

    Returns (`__call__`): a `BatchFeature` with `pixel_values` (a list of (3, h_i, w_i) tensors, or a
    (B, 3, H, W) tensor with `pad_batch`), `image_sizes` (B, 2) resized `(h, w)` and `original_sizes`
    (B, 2) `(H, W)`, which `VinVLDetector.forward` takes as they are.
    """

    model_input_names = ["pixel_values", "image_sizes", "original_sizes"]
    valid_kwargs = VinVLImageProcessorKwargs

    def __init__(
        self,
        min_size: int = 600,
        max_size: int = 1000,
        pixel_mean: Sequence[float] = (103.53, 116.28, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        pad_batch: bool = False,
        size_divisibility: int = 0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(min_size) <= 0 or (max_size is not None and int(max_size) < int(min_size)):
            raise ValueError(f"min_size = {min_size}, max_size = {max_size}; expected 0 < min_size <= max_size.")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"pixel_mean = {pixel_mean}, pixel_std = {pixel_std}; expected 3 BGR values, std > 0.")
        if int(size_divisibility) < 0:
            raise ValueError(f"size_divisibility = {size_divisibility}; expected 0 (none) or a positive multiple.")
        self.min_size = int(min_size)
        self.max_size = None if max_size is None else int(max_size)
        self.pixel_mean = [float(m) for m in pixel_mean]
        self.pixel_std = [float(s) for s in pixel_std]
        self.pad_batch = bool(pad_batch)
        self.size_divisibility = int(size_divisibility)
        self.max_image_pixels = int(max_image_pixels)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # transformers 5 drops None values that have no class-level default; `max_size=None` (no bound on
        # the long side) must survive a save instead of coming back as 1000.
        output["max_size"] = self.max_size
        return output

    # --- one image ----------------------------------------------------------------------------------

    def to_rgb(self, image: Any, index: int = 0) -> Image.Image:
        """Any accepted input -> an 8-bit RGB PIL image (the conversions of the module docstring)."""
        if isinstance(image, (str, os.PathLike)):
            image = _open_path(image, index)
        elif torch.is_tensor(image):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            image = _array_to_pil(image, index)
        if not isinstance(image, Image.Image):
            raise ValueError(
                f"images[{index}] is {_describe(image)}; expected a file path, a PIL image, a numpy array or a "
                "torch tensor (H x W x C)."
            )
        width, height = image.size
        if width == 0 or height == 0:
            raise ValueError(f"images[{index}] is empty ({width} x {height} pixels); expected an image with pixels.")
        if width * height > self.max_image_pixels:
            raise ValueError(
                f"images[{index}] has {width} x {height} = {width * height} pixels, above max_image_pixels = "
                f"{self.max_image_pixels}; downscale it first or raise max_image_pixels."
            )
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = _pil_16bit_to_8bit(image)
        return image if image.mode == "RGB" else image.convert("RGB")

    def normalize_image(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> resized, (3, h, w) float32 BGR x 255 minus means, divided by std."""
        height, width = resized_size(image.height, image.width, self.min_size, self.max_size)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.BILINEAR)
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        # The original's order of operations, kept so that the floats match bit for bit.
        tensor = tensor.to(torch.float32).div(255)[[2, 1, 0]] * 255
        mean = torch.as_tensor(self.pixel_mean, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(self.pixel_std, dtype=torch.float32)[:, None, None]
        return tensor.sub_(mean).div_(std)

    # --- batch --------------------------------------------------------------------------------------

    def pad(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Zero-pads (3, h_i, w_i) tensors bottom/right into one (B, 3, H, W) batch (after normalisation)."""
        height = max(t.shape[1] for t in tensors)
        width = max(t.shape[2] for t in tensors)
        if self.size_divisibility > 0:
            step = self.size_divisibility
            height, width = -(-height // step) * step, -(-width // step) * step
        batch = tensors[0].new_zeros(len(tensors), 3, height, width)
        for slot, tensor in zip(batch, tensors):
            slot[:, : tensor.shape[1], : tensor.shape[2]].copy_(tensor)
        return batch

    def preprocess(
        self, images: Any, pad_batch: bool | None = None, return_tensors: Any = None, **kwargs: Any
    ) -> BatchFeature:
        """Images (one or a list) -> `pixel_values`, `image_sizes`, `original_sizes` (see the class doc)."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}; VinVLImageProcessor takes images and pad_batch.")
        if return_tensors not in (None, "pt"):
            raise ValueError(
                f"return_tensors = {return_tensors!r}; the detector takes torch tensors: use 'pt' or None."
            )
        if images is None or (isinstance(images, (list, tuple)) and len(images) == 0):
            raise ValueError("images is empty; pass an image or a list of images (paths, PIL images or arrays).")
        if not isinstance(images, (list, tuple)):
            images = [images]
        rgb = [self.to_rgb(image, index) for index, image in enumerate(images)]
        tensors = [self.normalize_image(image) for image in rgb]
        original_sizes = torch.tensor([[image.height, image.width] for image in rgb], dtype=torch.int64)
        image_sizes = torch.tensor([list(t.shape[1:]) for t in tensors], dtype=torch.int64)
        pad_batch = self.pad_batch if pad_batch is None else pad_batch
        pixel_values: torch.Tensor | list[torch.Tensor] = self.pad(tensors) if pad_batch else tensors
        return BatchFeature(
            {"pixel_values": pixel_values, "image_sizes": image_sizes, "original_sizes": original_sizes}
        )

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)


__all__ = ["VinVLImageProcessor", "VinVLImageProcessorKwargs", "resized_size"]
