"""Former name of :mod:`berg.training.datasets` (kept so existing creation scripts keep importing)."""

from berg.training.datasets import (  # noqa: F401
    EncodingDataset,
    SubjectData,
    read_dataset,
    write_dataset,
)

__all__ = ["SubjectData", "EncodingDataset", "write_dataset", "read_dataset"]
