"""Every supported format reads to the same records."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data import load_records
from alignkit.errors import DataError

RECORDS = [
    {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
        "margin": 1.5,
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "margin": 0.5,
    },
]


def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS))
    assert load_records(path).records == RECORDS


def test_json_with_data_key(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": RECORDS}))
    assert load_records(path).records == RECORDS


def test_json_errors_name_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([RECORDS[0], {"prompt": "p", "chosen": "a"}]))
    with pytest.raises(DataError, match=r"d\.json: record 2: field 'rejected' is missing"):
        load_records(path, "preference")


def test_truncated_json_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS)[:-10])
    with pytest.raises(DataError, match=r"d\.json:1: truncated JSON"):
        load_records(path)


def test_csv_with_message_cells_and_typed_fields(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["prompt", "chosen", "rejected", "margin"])
        writer.writeheader()
        for record in RECORDS:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in record.items()}
            )
    assert load_records(path).records == RECORDS


def test_csv_unpaired_labels_and_empty_optional_cells(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label,id\nHi,Hello,true,\nHi,Go away,FALSE,x2\n")
    assert load_records(path).records == [
        {"prompt": "Hi", "completion": "Hello", "label": True},
        {"prompt": "Hi", "completion": "Go away", "label": False, "id": "x2"},
    ]


def test_csv_bad_utf8_names_the_record(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,completion\nok,fine\ncaf\xe9,x\n")
    with pytest.raises(
        DataError, match=r"bad\.csv:3: bytes are not valid UTF-8 \(byte 0xe9 at offset 3\)"
    ):
        load_records(path, "sft")


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    assert load_records(path).records == RECORDS


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_records(path)


def test_datasets_folder_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(RECORDS)
    dataset.save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds").records == RECORDS
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert load_records(tmp_path / "dd").records == RECORDS
    assert load_records(tmp_path / "dd" / "test").records == RECORDS[:1]


def test_dataset_dict_without_train_split_asks_for_one(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"a": dataset, "b": dataset}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="splits a, b; give one split's folder"):
        load_records(tmp_path / "dd")


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="no state.json"):
        load_records(tmp_path / "plain")
