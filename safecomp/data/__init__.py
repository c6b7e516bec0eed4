"""Datasets: tfds builders for the testbed and public sets, row-checked readers.

The builders live in `safecomp.data.public` and `safecomp.data.testbed_builders` (importing one
registers its datasets with tfds, e.g. for `load_split("xstest/prompts", "test", data_dir=...)`).
They are not imported here, so that reading JSONL does not pull in tfds.
"""
from safecomp.data.readers import (DecodedSource, ReadResult, RowError, TailRepair, decode_record,
                                   load_split, read_csv, read_json_array, read_jsonl,
                                   repair_jsonl_tail)

__all__ = [
    "DecodedSource", "ReadResult", "RowError", "TailRepair", "decode_record", "load_split",
    "read_csv", "read_json_array", "read_jsonl", "repair_jsonl_tail",
]
