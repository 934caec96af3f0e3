"""transformers' own `ImageProcessingTestMixin` and `ProcessorTesterMixin`, applied to Oscar's processors.

The mixins come from the transformers source distribution of the installed version
(`tests/test_image_processing_common.py`, `tests/test_processing_common.py`), fetched into `.cache/`
by `support.transformers_tests`; without the package index the module skips, saying so.

- `VinVLImageProcessor` is a real pixel image processor (the original's resize rule, BGR x 255 minus
  the pixel means): the pixel tests run on it with `pad_batch=True`, so that a batch is one tensor.
- `OscarRegionFeatureProcessor` reads detector regions, not pixels: the serialisation and Auto
  tests run on it, the pixel tests cannot apply.
- `OscarProcessor` pairs that region processor with a BERT tokenizer; raw images reach it through
  its detector: a tiny random VinVL detector saved in a folder of its own, named by
  `detector_name_or_path`, so `images=` runs the real detection path.

Where the mixin's own form of a test cannot run here (a Hub download, `RUN_SLOW`, a warning where
ours raise), the override runs the same check in Oscar's terms. Every skip states why the test cannot
apply to Oscar.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support import parity_fixture_dir, run_isolated
from support.transformers_tests import sdist_test_modules
from transformers import BertTokenizerFast
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING


pytestmark = pytest.mark.slow

image_processing_common, processing_common = sdist_test_modules(
    "test_image_processing_common.py", "test_processing_common.py"
)
ImageProcessingTester = image_processing_common.ImageProcessingTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ProcessorTesterMixin = processing_common.ProcessorTesterMixin

from oscar_hf import OscarConfig  # noqa: E402
from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor  # noqa: E402


vinvl = pytest.importorskip("oscar_hf.processors.modeling_vinvl", reason="the VinVL detector needs torchvision")
from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig  # noqa: E402
from oscar_hf.processors.detection_oscar import detector_from_pretrained  # noqa: E402
from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor, resized_size  # noqa: E402


REGIONS_NOT_PIXELS = "OscarRegionFeatureProcessor reads detector regions (features, boxes, image sizes), not pixels"


def skipped(reason: str):
    """A test that skips with `reason` (for the mixins' parameterized tests, one name per parameter)."""

    def test(self):
        self.skipTest(reason)

    return test


def local_photo() -> Image.Image:
    """scikit-image's photo of a cat when installed, else random pixels of the same size."""
    try:
        from skimage import data
    except ImportError:
        return Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8))
    return Image.fromarray(data.chelsea())


# `test_pil_can_run_without_torchvision`, applied: the saved folder loads as remote code (the flat file
# next to its config) in a fresh interpreter where torchvision and this package cannot be imported,
# and gives the same outputs. Inputs travel as .npz, outputs as safetensors.
WITHOUT_TORCHVISION = textwrap.dedent(
    """
    import json, sys
    sys.modules["torchvision"] = None  # `import torchvision` raises ImportError
    import numpy as np
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor

    folder, inputs_path, outputs_path, call = sys.argv[1:]
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    arrays = np.load(inputs_path)
    inputs = {}
    for key in sorted(arrays.files, key=lambda k: int(k.rsplit("_", 1)[1])):
        inputs.setdefault(key.rsplit("_", 1)[0], []).append(arrays[key])
    outputs = processor(**inputs, **json.loads(call))
    save_file({k: v.contiguous() for k, v in outputs.items()}, outputs_path)
    print("RESULT " + json.dumps(type(processor).__name__))
    """
)


def assert_runs_without_torchvision(processor, inputs: dict[str, list[np.ndarray]], **call) -> None:
    type(processor).register_for_auto_class("AutoImageProcessor")  # the flat file travels with the folder
    expected = processor(**inputs, **call)
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        arrays = {
            f"{name}_{i}": np.asarray(value) for name, values in inputs.items() for i, value in enumerate(values)
        }
        np.savez(Path(folder) / "inputs.npz", **arrays)
        outputs_path = Path(folder) / "outputs.safetensors"
        name = run_isolated(
            WITHOUT_TORCHVISION, folder, str(Path(folder) / "inputs.npz"), str(outputs_path), json.dumps(call),
            workdir=Path(folder) / "work",
        )  # fmt: skip
        outputs = load_file(outputs_path)
    assert name == type(processor).__name__
    assert set(outputs) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(outputs[key], value, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# VinVLImageProcessor: pixels
# ------------------------------------------------------------------------------------------------


class VinVLImageProcessingTester(ImageProcessingTester):
    """Small sizes (short side 32, long side at most 60) so that a batch of 7 images takes milliseconds."""

    def __init__(self, parent):
        super().__init__(
            parent,
            batch_size=7,
            min_resolution=20,
            max_resolution=90,
            min_size=32,
            max_size=60,
            pad_batch=True,
            size_divisibility=8,
        )

    def _get_image_processing_classes(self) -> dict:
        # The mixin looks the classes up by the test folder's name among transformers' own models; ours
        # are those registered for the VinVL detector's config.
        return dict(IMAGE_PROCESSOR_MAPPING[VinVLDetectorConfig])

    def expected_output_image_shape(self, images) -> tuple[int, int, int]:
        """The original `Resize.get_size` per image, zero-padded to the largest, rounded up to `size_divisibility`."""
        sizes = []
        for image in images:
            if isinstance(image, Image.Image):
                height, width = image.height, image.width
            elif isinstance(image, np.ndarray):  # channels last
                height, width = image.shape[:2]
            else:  # torch, channels first
                height, width = image.shape[1:]
            sizes.append(resized_size(height, width, self.min_size, self.max_size))
        step = self.size_divisibility
        height = -(-max(h for h, _ in sizes) // step) * step
        width = -(-max(w for _, w in sizes) // step) * step
        return 3, height, width


class VinVLImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = VinVLImageProcessingTester
    test_cast_dtype = True

    def test_call_numpy_4_channels(self):
        self.skipTest(
            "the VinVL detector reads 3 BGR channels: RGBA drops its alpha as the original's convert('RGB'), and "
            "per-call image_mean / image_std / input_data_format are not options of the original transform"
        )

    def test_backends_equivalence(self):
        # The mixin's test photo is a Hub download; a local photo stands in offline.
        with mock.patch.object(image_processing_common, "load_test_image", lambda url: local_photo()):
            super().test_backends_equivalence()

    def test_pil_can_run_without_torchvision(self):
        processor = VinVLImageProcessor(**self.image_processor_dict)
        images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, numpify=True)
        assert_runs_without_torchvision(processor, {"images": images})

    def test_can_compile_torchvision_backend(self):
        self.skipTest(
            "VinVL's transform is the original's PIL resize (the torchvision name is registered to the same PIL "
            "class): there is no torchvision transform to compile"
        )

    def test_image_processor_preprocess_arguments(self):
        # Ours refuse unknown arguments with a TypeError naming them (the mixin accepts a warning).
        images = self.image_processor_tester.prepare_image_inputs()
        with self.assertRaisesRegex(TypeError, "extra_argument"):
            VinVLImageProcessor(**self.image_processor_dict)(images, extra_argument=True)

    def test_override_instance_attributes_does_not_affect_other_instances(self):
        # The mixin's check on `size` / `image_mean`, applied to VinVL's mutable settings.
        first, second = VinVLImageProcessor(), VinVLImageProcessor()
        first.pixel_mean[0], first.pixel_std[0] = -1.0, -1.0
        self.assertEqual(second.pixel_mean, VinVLImageProcessor().pixel_mean)
        self.assertEqual(second.pixel_std, VinVLImageProcessor().pixel_std)

    def test_fast_image_processor_explicit_none_preserved(self):
        # VinVL's one option that takes None: `max_size=None` (no bound on the long side).
        processor = VinVLImageProcessor(max_size=None)
        self.assertIsNone(processor.to_dict()["max_size"])
        with tempfile.TemporaryDirectory() as folder:
            processor.save_pretrained(folder)
            self.assertIsNone(VinVLImageProcessor.from_pretrained(folder).max_size)


def _mixed_inputs_test(num_channels: int):
    """The mixin's `test_convert_to_rgb_mixed_input_batch`: VinVL always converts to RGB (no flag to pass)."""

    def test(self):
        height, width = 40, 100
        channels_last = np.random.default_rng(num_channels).integers(0, 256, (height, width, num_channels), np.uint8)
        channels_first = np.ascontiguousarray(channels_last.transpose(2, 0, 1))
        pil = Image.fromarray(channels_last[..., 0] if num_channels == 1 else channels_last)
        images = [
            pil,
            channels_last,
            channels_first,
            torch.from_numpy(channels_last),
            torch.from_numpy(channels_first),
        ]
        processor = VinVLImageProcessor(**self.image_processor_dict)
        reference = processor(pil)["pixel_values"][0]
        for image in images:  # every layout gives the pixels of the PIL image
            torch.testing.assert_close(processor(image)["pixel_values"][0], reference, rtol=0, atol=0)
        batch = processor(images)["pixel_values"]
        self.assertEqual(tuple(batch.shape[:2]), (len(images), 3))

    return test


# The mixin's parameterized names: _0, _1, _2 for 1, 3 and 4 channels.
for _channels, _name in ((1, "0"), (3, "1"), (4, "2")):
    setattr(VinVLImageProcessingTest, f"test_convert_to_rgb_mixed_input_batch_{_name}", _mixed_inputs_test(_channels))


# ------------------------------------------------------------------------------------------------
# OscarRegionFeatureProcessor: regions
# ------------------------------------------------------------------------------------------------


class RegionFeatureProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, batch_size=3, region_feature_dim=8, max_img_seq_length=5, clip_boxes=True)

    def _get_image_processing_classes(self) -> dict:
        return dict(IMAGE_PROCESSOR_MAPPING[OscarConfig])


class RegionFeatureProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = RegionFeatureProcessingTester

    def test_backends_equivalence(self):
        self.skipTest(f"{REGIONS_NOT_PIXELS}; both registered backends are the same class")

    def test_backends_equivalence_batched(self):
        self.skipTest(f"{REGIONS_NOT_PIXELS}; both registered backends are the same class")

    def test_call_pil(self):
        self.skipTest(REGIONS_NOT_PIXELS)

    def test_call_numpy(self):
        self.skipTest(REGIONS_NOT_PIXELS)

    def test_call_pytorch(self):
        self.skipTest(REGIONS_NOT_PIXELS)

    def test_call_numpy_4_channels(self):
        self.skipTest(REGIONS_NOT_PIXELS)

    test_convert_to_rgb_mixed_input_batch_0 = skipped(REGIONS_NOT_PIXELS)
    test_convert_to_rgb_mixed_input_batch_1 = skipped(REGIONS_NOT_PIXELS)
    test_convert_to_rgb_mixed_input_batch_2 = skipped(REGIONS_NOT_PIXELS)
    test_can_compile_torchvision_backend = skipped(REGIONS_NOT_PIXELS)
    test_override_instance_attributes_does_not_affect_other_instances = skipped(
        "the region processor's settings are ints, bools and a string: it has no mutable attribute to share"
    )
    test_fast_image_processor_explicit_none_preserved = skipped("no option of the region processor takes None")

    def test_pil_can_run_without_torchvision(self):
        rng = np.random.default_rng(0)
        inputs = {
            "region_features": [rng.random((n, 8), dtype=np.float32) for n in (2, 7)],
            "boxes": [np.array([[0, 0, 10, 20], [5, 5, 30, 40]] * n, np.float32)[:n] for n in (2, 7)],
            "image_sizes": [np.array([40, 30]), np.array([50, 60])],
        }
        assert_runs_without_torchvision(OscarRegionFeatureProcessor(**self.image_processor_dict), inputs)

    def test_image_processor_preprocess_arguments(self):
        # Ours refuse unknown arguments with a TypeError naming them (the mixin accepts a warning).
        processor = OscarRegionFeatureProcessor(**self.image_processor_dict)
        with self.assertRaisesRegex(TypeError, "extra_argument"):
            processor([np.ones((2, 14), np.float32)], extra_argument=True)


# ------------------------------------------------------------------------------------------------
# OscarProcessor
# ------------------------------------------------------------------------------------------------


# What the mixin's image-modality kwargs tests pass and check: pixel rescaling options for the image processor
# (`do_rescale=True, rescale_factor=-1`) that must turn `pixel_values` negative.
PIXEL_OPTIONS = (
    "it passes pixel options (do_rescale, rescale_factor=-1) that must turn the pixel values negative; OscarProcessor's "
    "image input is detector region features, which its region processor never rescales"
)
# The mixin's conventions for processors built on `ProcessingKwargs` / `_merge_kwargs`.
LAYOUT_ARGUMENTS = (
    "OscarProcessor takes the original tensorizers' layout options as explicit arguments (max_seq_length overriding "
    "the saved length, padding, truncation=True with the original's longest-first rule, return_tensors='pt' only) "
    "instead of routing tokenizer / image-processor kwargs through ProcessingKwargs and _merge_kwargs, whose "
    "conventions this test checks"
)


def save_tiny_vinvl_detector(folder: str) -> int:
    """A random VinVL detector with a few channels per stage, saved as converted ones are; returns its region width."""
    torch.manual_seed(0)
    config = VinVLDetectorConfig(
        stage_block_counts=(1, 1, 1), head_block_count=1, num_groups=2, width_per_group=2, stem_out_channels=4,
        res2_out_channels=4, backbone_out_channels=16, num_classes=5, num_attributes=4, class_embedding_dim=4,
        attribute_embedding_dim=4, max_attributes_per_box=3, rpn_post_nms_top_n=20,
    )  # fmt: skip
    vinvl.VinVLDetector(config).eval().save_pretrained(folder)
    VinVLImageProcessor(min_size=32, max_size=64).save_pretrained(folder)
    (record,) = detector_from_pretrained(folder, min_boxes=1, max_boxes=1)([Image.new("RGB", (40, 30))])
    return int(record["features"].shape[-1])


class OscarProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    """The processor with a tiny random VinVL detector in a folder of its own, so that `images=` runs."""

    processor_class = OscarProcessor
    images_input_name = "img_feats"
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.detector_folder = tempfile.mkdtemp()
        cls.region_width = save_tiny_vinvl_detector(cls.detector_folder)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.detector_folder, ignore_errors=True)

    @classmethod
    def _setup_image_processor(cls) -> OscarRegionFeatureProcessor:
        return OscarRegionFeatureProcessor(region_feature_dim=cls.region_width, max_img_seq_length=6)

    @classmethod
    def _setup_tokenizer(cls) -> BertTokenizerFast:
        folder = tempfile.mkdtemp()
        try:
            shutil.copyfile(parity_fixture_dir() / "vocab.txt", f"{folder}/vocab.txt")
            return BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @classmethod
    def prepare_processor_dict(cls) -> dict:
        # "longest" padding: a text without tags is then exactly the tokenizer's `[CLS] text [SEP]`.
        return {
            "max_seq_length": 24,
            "max_caption_length": 10,
            "max_tag_length": 6,
            "text_padding": "longest",
            "detector_name_or_path": cls.detector_folder,
            "detector_min_boxes": 2,
            "detector_max_boxes": 6,
        }

    def test_init_arguments_not_in_class_attributes(self):
        # `detector` is a property (the detector loaded on first use), not a class-level default: the
        # mixin's check, for everything else.
        init_arguments = self._get_explicit_arguments(OscarProcessor.__init__)
        properties = {name for name in init_arguments if isinstance(getattr(OscarProcessor, name, None), property)}
        self.assertEqual(properties, {"detector"})
        overlapping = {name for name in init_arguments - properties if hasattr(OscarProcessor, name)}
        self.assertFalse(overlapping, f"__init__ arguments {sorted(overlapping)} are also class attributes")

    test_subprocessor_defaults_1_images = skipped(
        "it calls the image processor on a PIL image; OscarProcessor's image processor takes detector regions "
        "(raw images reach it through the detector)"
    )
    test_processor_text_has_no_visual = skipped(
        "Oscar pairs every text with one image's regions after the text tokens: there are no image placeholder "
        "tokens to expand, and per-sample image lists with empty entries have no Oscar layout"
    )
    test_subprocessor_defaults_preserved_by_kwargs_0_images = skipped(PIXEL_OPTIONS)
    test_kwargs_overrides_default_subprocessor_kwargs_0_images = skipped(PIXEL_OPTIONS)
    test_unstructured_kwargs_0_images = skipped(PIXEL_OPTIONS)
    test_unstructured_kwargs_batched_0_images = skipped(PIXEL_OPTIONS)
    test_doubly_passed_kwargs_0_images = skipped(PIXEL_OPTIONS)
    test_structured_kwargs_nested_from_dict_0_images = skipped(PIXEL_OPTIONS)
    test_overlapping_text_image_kwargs_handling_0_images = skipped(PIXEL_OPTIONS)
    test_flat_kwarg_applied_when_modality_dict_lacks_it = skipped(
        "it passes text_kwargs={}; " + LAYOUT_ARGUMENTS.replace(" whose conventions this test checks", "")
    )
    test_call_arguments_default_none = skipped(LAYOUT_ARGUMENTS)
    test_call_arguments_not_in_attributes = skipped(LAYOUT_ARGUMENTS)
    test_call_arguments_not_in_processor_kwargs = skipped(LAYOUT_ARGUMENTS)


# Oscar prompts are the original layouts (text, tags, regions after the text): no chat template and no
# image placeholder tokens; the mixin's tests of those (audio and video ones included) cannot apply.
NO_CHAT_TEMPLATE = "OscarProcessor has no chat template: its inputs are the original text / tags / regions layouts"
NO_PLACEHOLDERS = "Oscar has no image placeholder tokens in the text: the regions follow the text tokens"
for _name in dir(ProcessorTesterMixin):
    if _name.startswith("test_") and "chat_template" in _name:
        setattr(OscarProcessorTest, _name, skipped(NO_CHAT_TEMPLATE))
    elif _name.startswith(("test_get_num_multimodal_tokens", "test_replacement_offsets")):
        setattr(OscarProcessorTest, _name, skipped(NO_PLACEHOLDERS))
