"""Oscar / Oscar+ (VinVL) for Hugging Face transformers.

Importing the package registers the classes with the Auto classes, so a pip-installed user can
`AutoModel.from_pretrained(folder)` without `trust_remote_code`; exported folders also carry the
code as flat remote-code files for everyone else.
"""

# The folder is installed as `oscar_hf`; imported under its folder name (e.g. from the repository root) it
# would load a second, different copy of every class.
if __name__ != "oscar_hf":
    raise ImportError(f"{__name__} is the source folder of `oscar_hf`: `import oscar_hf` instead (pip install -e .).")


from .configuration_oscar import OscarConfig
from .modeling_oscar import (
    OscarCaptionGenerationOutput,
    OscarCaptioningOutput,
    OscarForImageCaptioning,
    OscarForImageTextRetrieval,
    OscarForNLVR2,
    OscarForPreTraining,
    OscarForPreTrainingOutput,
    OscarForSequenceClassification,
    OscarImageTextRetrievalOutput,
    OscarModel,
    OscarModelOutput,
    OscarPreTrainedModel,
)
from .registration import AUTO_MAP, register_auto_classes


register_auto_classes()


def _register_vinvl_detector() -> None:
    """The VinVL detector loads with AutoModel / AutoImageProcessor too; it needs torchvision (the `detect` extra)."""
    try:
        from .processors.modeling_vinvl import register_vinvl_auto_classes
    except ImportError:  # torchvision missing: the detector is unavailable, everything else works
        return
    register_vinvl_auto_classes()


_register_vinvl_detector()

__version__ = "0.1.0.dev0"

__all__ = [
    "AUTO_MAP",
    "OscarCaptionGenerationOutput",
    "OscarCaptioningOutput",
    "OscarConfig",
    "OscarForImageCaptioning",
    "OscarForImageTextRetrieval",
    "OscarForNLVR2",
    "OscarForPreTraining",
    "OscarForPreTrainingOutput",
    "OscarForSequenceClassification",
    "OscarImageTextRetrievalOutput",
    "OscarModel",
    "OscarModelOutput",
    "OscarPreTrainedModel",
    "register_auto_classes",
]
