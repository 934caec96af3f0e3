"""Oscar / VinVL datasets: readers for the original files and builders of Parquet `datasets`.

Command line: ``python -m oscar_hf.data build <task> ...`` (see ``docs/data.md``).
"""

# The folder is installed as `oscar_hf.data`; imported under its folder name (e.g. from the repository root) it
# would load a second, different copy of every class.
if __name__ != "oscar_hf.data":
    raise ImportError(
        f"{__name__} is the source folder of `oscar_hf.data`: `import oscar_hf.data` instead (pip install -e .)."
    )

from oscar_hf.extras import require_extra


# The readers and builders write and read Parquet through `datasets`: both come with the `data` extra.
require_extra("pyarrow", extra="data", needed_by="`oscar_hf.data` (dataset readers and builders)")
require_extra("datasets", extra="data", needed_by="`oscar_hf.data` (dataset readers and builders)")

from .annotations import read_captions, read_corpus_yaml, read_gqa, read_karpathy, read_nlvr2, read_vqa  # noqa: E402
from .answers import load_vocabulary, normalize_answer, soft_score  # noqa: E402
from .builders import (  # noqa: E402
    CaptionBuilder,
    GQABuilder,
    NLVR2Builder,
    PretrainCorpusBuilder,
    RetrievalBuilder,
    VQABuilder,
)
from .errors import BadRowError, RowErrorPolicy  # noqa: E402
from .regions import ParquetRegionSource, PrecomputedRegions, RegionRecord, RegionSource, TsvRegionSource, box_geometry  # noqa: E402
from .tsv import TsvFile, write_lineidx  # noqa: E402
from .writer import BuildSummary, build_dataset  # noqa: E402


__all__ = [
    "BadRowError",
    "BuildSummary",
    "CaptionBuilder",
    "GQABuilder",
    "NLVR2Builder",
    "ParquetRegionSource",
    "PrecomputedRegions",
    "PretrainCorpusBuilder",
    "RegionRecord",
    "RegionSource",
    "RetrievalBuilder",
    "RowErrorPolicy",
    "TsvFile",
    "TsvRegionSource",
    "VQABuilder",
    "box_geometry",
    "build_dataset",
    "load_vocabulary",
    "normalize_answer",
    "read_captions",
    "read_corpus_yaml",
    "read_gqa",
    "read_karpathy",
    "read_nlvr2",
    "read_vqa",
    "soft_score",
    "write_lineidx",
]
