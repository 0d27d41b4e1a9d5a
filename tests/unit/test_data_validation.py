"""Every bad-input case gets an error naming file, record and field (issue: foundation §3)."""

import json

import pytest

from alignkit.data import Kind, load_records
from alignkit.errors import DataError

PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}


def error_text(path, kind=None):
    with pytest.raises(DataError) as info:
        load_records(path, kind)
    return str(info.value)


def test_missing_field(write_jsonl):
    path = write_jsonl([PAIR, {"prompt": "Say hi", "chosen": "Hi!"}])
    assert f"{path}:2: field 'rejected' is missing" in error_text(path, "preference")


def test_wrong_type(write_jsonl):
    path = write_jsonl([{"prompt": 5, "chosen": "a", "rejected": "b"}])
    assert (
        f"{path}:1: field 'prompt' must be a string or a list of messages, got int"
        in error_text(path)
    )


def test_empty_completion(write_jsonl):
    path = write_jsonl([{"prompt": "p", "completion": "   "}])
    assert f"{path}:1: field 'completion' is empty" in error_text(path, "sft")


def test_unknown_role(write_jsonl):
    path = write_jsonl(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}]
    )
    message = error_text(path, "sft")
    assert f"{path}:1: field 'messages[1].role' has unknown role 'bot'" in message
    assert "expected one of system, user, assistant, tool" in message


def test_line_that_is_not_an_object(write_jsonl):
    path = write_jsonl([PAIR, "[1, 2, 3]"])
    assert f"{path}:2: record is not a JSON object (got array)" in error_text(path, "preference")


def test_truncated_json(write_jsonl):
    path = write_jsonl([PAIR, '{"prompt": "Say hi", "chosen": "Hi!", "rej'])
    assert f"{path}:2: truncated JSON" in error_text(path, "preference")


def test_malformed_json_in_the_middle_of_a_line(write_jsonl):
    path = write_jsonl(['{"prompt": "a" "chosen": "b"}'])
    assert f"{path}:1: not valid JSON: Expecting ',' delimiter at column 16" in error_text(
        path, "preference"
    )


def test_bytes_that_are_not_utf8(write_jsonl):
    path = write_jsonl([PAIR, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'])
    assert f"{path}:2: bytes are not valid UTF-8 (byte 0xe9 at offset 15)" in error_text(
        path, "preference"
    )


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert error_text(path) == f"{path}: file is empty (no records)"


def test_file_with_only_blank_lines_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n\n  \n")
    assert error_text(path) == f"{path}: file is empty (no records)"


def test_missing_file_and_unsupported_type(tmp_path):
    assert error_text(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    text_file = tmp_path / "data.txt"
    text_file.write_text("hello")
    assert "unsupported file type '.txt'" in error_text(text_file)


def test_all_errors_are_listed_not_only_the_first(write_jsonl):
    path = write_jsonl([{"prompt": "p"}, PAIR, {"chosen": "a", "rejected": "b"}], name="many.jsonl")
    message = error_text(path, "preference")
    assert "2 invalid record(s)" in message
    assert f"{path}:1: field 'chosen' is missing" in message
    assert f"{path}:3: field 'prompt' is missing" in message


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"},
            "field 'margin' must be a number, got string",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 1.5},
            "field 'p_chosen' must be between 0.0 and 1.0, got 1.5",
        ),
        (
            {"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b"},
            "field 'chosen' is a string but 'prompt' is a list of messages; use the same form for both",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "field 'chosen[-1].role' must be 'assistant'",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant"}]},
            "field 'rejected[0].content' is missing",
        ),
        (
            {"prompt": [], "chosen": "a", "rejected": "b"},
            "field 'prompt' is an empty list of messages",
        ),
    ],
)
def test_preference_field_rules(write_jsonl, record, expected):
    path = write_jsonl([record])
    assert f"{path}:1: {expected}" in error_text(path, "preference")


def test_unpaired_label_must_be_boolean(write_jsonl):
    path = write_jsonl([{"prompt": "p", "completion": "c", "label": "yes"}])
    assert (
        f"{path}:1: field 'label' must be a boolean (true = desirable), got string"
        in error_text(path, "unpaired")
    )


def test_sft_messages_need_an_assistant_turn(write_jsonl):
    path = write_jsonl([{"messages": [{"role": "user", "content": "hi"}]}])
    assert "field 'messages' has no non-empty assistant message to train on" in error_text(
        path, "sft"
    )


def test_kind_is_inferred_from_fields(write_jsonl):
    assert load_records(write_jsonl([PAIR])).kind == Kind.PREFERENCE
    assert (
        load_records(write_jsonl([{"prompt": "p", "completion": "c", "label": True}])).kind
        == Kind.UNPAIRED
    )
    assert load_records(write_jsonl([{"prompt": "p", "completion": "c"}])).kind == Kind.SFT
    assert load_records(write_jsonl([{"prompt": "p"}])).kind == Kind.PROMPT


def test_skip_invalid_writes_rejects_and_keeps_the_rest(write_jsonl, tmp_path, caplog):
    path = write_jsonl([PAIR, {"prompt": "p", "chosen": "a"}, "{not json", dict(PAIR, id=7)])
    rejects = tmp_path / "out" / "rejects.jsonl"
    loaded = load_records(path, "preference", skip_invalid=True, rejects_path=rejects)
    assert loaded.records == [PAIR, dict(PAIR, id=7)]
    assert [str(p) for p in loaded.rejected] == [
        f"{path}:2: field 'rejected' is missing",
        f"{path}:3: not valid JSON: Expecting property name enclosed in double quotes at column 2",
    ]
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert lines[0] == {
        "location": f"{path}:2",
        "error": "field 'rejected' is missing",
        "record": {"prompt": "p", "chosen": "a"},
    }
    assert lines[1]["record"] == "{not json"
    assert "skipped 2 invalid record(s) of 4" in caplog.text


def test_skip_invalid_with_nothing_valid_still_fails(write_jsonl):
    path = write_jsonl([{"prompt": "p"}])
    with pytest.raises(DataError, match="no valid records"):
        load_records(path, "preference", skip_invalid=True)


RANKING = {"prompt": "Rate these", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"responses": ["only one"]}, "field 'responses' must be a list of at least 2 responses"),
        ({"responses": ["a", "", "c"]}, "field 'responses[1]' is empty"),
        ({"ranking": [0, 1]}, "field 'ranking' must list every index 0..2 of 'responses' once"),
        ({"ranking": [0, 0, 1]}, "field 'ranking' must list every index 0..2"),
        ({"ranking": [0, 1, True]}, "field 'ranking' must list every index 0..2"),
        (
            {"responses": ["a", [{"role": "assistant", "content": "b"}], "c"]},
            "field 'responses[1]' is a list of messages but 'prompt' is a string",
        ),
    ],
)
def test_ranking_field_rules(write_jsonl, change, expected):
    path = write_jsonl([RANKING, {**RANKING, **change}])
    assert f"{path}:2: {expected}" in error_text(path, "ranking")


def test_mixed_pairs_and_rankings_load_with_a_tuple_of_kinds(write_jsonl):
    path = write_jsonl([PAIR, RANKING, {"prompt": "p", "chosen": "x"}])
    text = error_text(path, (Kind.PREFERENCE, Kind.RANKING))
    assert f"{path}:3: field 'rejected' is missing" in text and ":2:" not in text
    loaded = load_records(write_jsonl([PAIR, RANKING]), (Kind.PREFERENCE, Kind.RANKING))
    assert len(loaded) == 2
