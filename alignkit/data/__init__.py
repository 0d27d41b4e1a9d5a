"""Data: records and validation, file readers, chat templating with loss masks, collators."""

from alignkit.data.loading import LoadedRecords, RecordProblem, iter_checked, load_records
from alignkit.data.records import Kind, infer_kind, validate_record
from alignkit.data.templating import (
    IGNORE_INDEX,
    ChatEncoder,
    EncodedCompletion,
    EncodedPair,
    EncodedSequence,
)

__all__ = [
    "IGNORE_INDEX",
    "ChatEncoder",
    "EncodedCompletion",
    "EncodedPair",
    "EncodedSequence",
    "Kind",
    "LoadedRecords",
    "RecordProblem",
    "infer_kind",
    "iter_checked",
    "load_records",
    "validate_record",
]
