"""Anthropic-HH raw text -> conversational preference records."""

import json

import pytest

from alignkit.data import load_records
from alignkit.data.hh import convert_hh_file, convert_hh_record
from alignkit.data.records import RecordInvalid
from alignkit.errors import DataError

HH = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Capital of France?\n\nAssistant: Paris.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Capital of France?\n\nAssistant: No idea.",
}


def test_multi_turn_record_splits_into_shared_prompt_and_final_turns():
    assert convert_hh_record(HH) == {
        "prompt": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Capital of France?"},
        ],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
    }


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"chosen": HH["chosen"]}, "field 'rejected' is missing"),
        (
            {"chosen": "Human: hi", "rejected": HH["rejected"]},
            "field 'chosen' must start with '\\n\\nHuman: '",
        ),
        (
            {"chosen": HH["chosen"] + "\n\nHuman: more?", "rejected": HH["rejected"]},
            "field 'chosen' does not end with an Assistant turn",
        ),
        (
            {"chosen": HH["chosen"], "rejected": "\n\nHuman: Other\n\nAssistant: x"},
            "does not share the conversation",
        ),
        (
            {"chosen": HH["chosen"], "rejected": HH["rejected"].replace("No idea.", " ")},
            "field 'rejected[-1].content' is empty",
        ),
    ],
)
def test_malformed_records(record, message):
    with pytest.raises(RecordInvalid) as info:
        convert_hh_record(record)
    assert message in info.value.describe()


def test_file_conversion_output_loads_as_preference_data(write_jsonl, tmp_path):
    src = write_jsonl([HH, dict(HH, id="a7")], name="hh.jsonl")
    written, problems = convert_hh_file(src, tmp_path / "out.jsonl")
    assert (written, problems) == (2, [])
    loaded = load_records(tmp_path / "out.jsonl", "preference")
    assert loaded.records[1]["id"] == "a7"
    assert loaded.records[0]["chosen"] == [{"role": "assistant", "content": "Paris."}]


def test_file_conversion_fails_whole_or_sets_bad_records_aside(write_jsonl, tmp_path):
    src = write_jsonl([HH, {"chosen": HH["chosen"]}], name="hh.jsonl")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'rejected' is missing"):
        convert_hh_file(src, out)
    assert not out.exists()
    written, problems = convert_hh_file(src, out, skip_invalid=True)
    assert written == 1 and [str(p) for p in problems] == [f"{src}:2: field 'rejected' is missing"]
    rejects = [
        json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()
    ]
    assert rejects[0]["error"] == "field 'rejected' is missing"
