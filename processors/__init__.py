"""Processing for Oscar / Oscar+ (VinVL): region features, tag-text layouts, collators, detectors.

`OscarProcessor` and `OscarRegionFeatureProcessor` are also flat remote-code files
(`processing_oscar.py`, `image_processing_oscar.py`) that exported folders carry.
"""

# The folder is installed as `oscar_hf.processors`; imported under its folder name (e.g. from the repository root) it
# would load a second, different copy of every class.
if __name__ != "oscar_hf.processors":
    raise ImportError(
        f"{__name__} is the source folder of `oscar_hf.processors`: `import oscar_hf.processors` instead (pip install -e .)."
    )


import transformers
from transformers import AutoImageProcessor, AutoProcessor

from oscar_hf.configuration_oscar import OscarConfig

from .collators import OscarCaptioningCollator, OscarPretrainingCollator
from .image_processing_oscar import BOX_FEATURE_DIM, OscarRegionFeatureProcessor, box_geometry
from .processing_oscar import OscarProcessor, join_tags, truncate_pair


# save_pretrained then writes `auto_map` and copies the two flat files, so a saved processor loads
# with AutoProcessor.from_pretrained(folder, trust_remote_code=True) where this package is absent.
OscarRegionFeatureProcessor.register_for_auto_class("AutoImageProcessor")
OscarProcessor.register_for_auto_class("AutoProcessor")
# Local Auto registration: with the package installed, saved folders load without trust_remote_code.
# The region processor reads no pixels, so it serves every image backend; registering it under both
# keeps transformers 5 from warning on each load that the (requested) torchvision backend is missing.
if int(transformers.__version__.split(".")[0]) >= 5:
    AutoImageProcessor.register(
        OscarConfig,
        image_processor_classes={"pil": OscarRegionFeatureProcessor, "torchvision": OscarRegionFeatureProcessor},
        exist_ok=True,
    )
else:
    AutoImageProcessor.register(OscarConfig, slow_image_processor_class=OscarRegionFeatureProcessor, exist_ok=True)
AutoProcessor.register(OscarConfig, OscarProcessor, exist_ok=True)

__all__ = [
    "BOX_FEATURE_DIM",
    "OscarCaptioningCollator",
    "OscarPretrainingCollator",
    "OscarProcessor",
    "OscarRegionFeatureProcessor",
    "box_geometry",
    "join_tags",
    "truncate_pair",
]
