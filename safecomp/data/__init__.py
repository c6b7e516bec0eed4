"""Datasets: tfds builders for the public sets, row-checked readers.

The builders live in `safecomp.data.public` (importing it registers its datasets with tfds, e.g. for
`load_split("xstest/prompts", "test", data_dir=...)`); the testbed's datasets, which hold a run
config's task data, are built in the tasks layer (`safecomp.tasks.testbed_datasets`). The builders
are not imported here, so that reading JSONL does not pull in tfds.
"""
from safecomp.data.readers import (DecodedSource, ReadResult, RowError, TailRepair, decode_record,
                                   load_split, read_csv, read_json_array, read_jsonl,
                                   repair_jsonl_tail)

__all__ = [
    "DecodedSource", "ReadResult", "RowError", "TailRepair", "decode_record", "load_split",
    "read_csv", "read_json_array", "read_jsonl", "repair_jsonl_tail",
]
