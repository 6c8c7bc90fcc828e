"""Data layer: sources -> :class:`~towerrec.data.tables.Dataset` -> splits.

Loaders: :func:`load_dataset` (built-in MovieLens releases, saved dataset folders, synthetic),
:meth:`Dataset.from_frame` (a Polars or pandas DataFrame), :func:`import_interactions`
(a CSV or Parquet file), :func:`make_synthetic`. Splits: :func:`make_split` by protocol name
(``tfrs-random``, ``temporal``, ``leave-last-out``) or the split functions themselves.
"""

from towerrec.data.filters import FilterReport, filter_interactions
from towerrec.data.importer import import_interactions
from towerrec.data.listwise import ListSample, sample_lists
from towerrec.data.movielens import load_movielens
from towerrec.data.registry import DATASET_NAMES, load_dataset
from towerrec.data.sequences import build_sequence_examples
from towerrec.data.splits import Split, make_split, split_leave_last_out, split_random, split_temporal
from towerrec.data.store import load_dataset_dir, save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.data.tables import Dataset, frame_fingerprint

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "FilterReport",
    "ListSample",
    "Split",
    "build_sequence_examples",
    "filter_interactions",
    "frame_fingerprint",
    "import_interactions",
    "load_dataset",
    "load_dataset_dir",
    "load_movielens",
    "make_split",
    "make_synthetic",
    "sample_lists",
    "save_dataset",
    "split_leave_last_out",
    "split_random",
    "split_temporal",
]
