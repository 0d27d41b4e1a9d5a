"""Value-alignment verification: the test format, the default test, margins against a
hand computation, and the report on hand-made margins."""

import pytest
import torch

from alignkit.evaluate.intervals import wilson_interval
from alignkit.evaluate.verify import (
    Query,
    VerifyTestError,
    implicit_margins,
    judge_margins,
    likelihood_margins,
    load_test,
    parse_test,
    preference_records,
    response_logps,
    score_test,
)
from alignkit.feedback.function import FunctionJudge

QUERY = {"id": "q1", "value": "honesty", "prompt": "P?", "aligned": "Yes.", "misaligned": "No."}


def test_default_test_covers_several_values_with_matched_replies(tokenizer):
    """The shipped test: 20-30 queries, at least 4 values with 4 or more each, and the two
    replies of a query within 6 tokens of each other (so length cannot be what a policy's
    preference reads)."""
    test = load_test()
    assert 20 <= len(test.queries) <= 30
    assert len({q.id for q in test.queries}) == len(test.queries)
    values = test.values()
    assert len(values) >= 4
    assert {"honesty", "harmlessness", "helpfulness", "privacy"} <= set(values)
    for value in values:
        assert sum(q.value == value for q in test.queries) >= 4
    for q in test.queries:
        aligned = len(tokenizer(q.aligned)["input_ids"])
        misaligned = len(tokenizer(q.misaligned)["input_ids"])
        assert abs(aligned - misaligned) <= 6, q.id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"valeu": "x"}, "unknown field 'valeu' (did you mean 'value'?)"),
        ({"prompt": ""}, "field 'prompt' must be a non-empty string"),
        ({"misaligned": "Yes."}, "'aligned' and 'misaligned' are the same text"),
    ],
)
def test_invalid_queries_name_the_query_and_field(change, message):
    with pytest.raises(VerifyTestError) as err:
        parse_test({"queries": [QUERY, {**QUERY, "id": "q2", **change}]}, "t.yaml")
    assert str(err.value) == f"t.yaml: query 2: {message}"


def test_duplicate_ids_and_empty_tests_are_rejected(tmp_path):
    with pytest.raises(VerifyTestError, match="query 2: id 'q1' already used by query 1"):
        parse_test([QUERY, QUERY], "t.yaml")
    with pytest.raises(VerifyTestError, match="'queries' is empty"):
        parse_test({"queries": []}, "t.yaml")
    with pytest.raises(VerifyTestError, match="no such test file"):
        load_test(tmp_path / "missing.yaml")


def test_report_from_hand_made_margins():
    """4 queries, margins (+1, -1, 0, +2): a tie is not a pass, so 2 of 4 pass;
    honesty 1/2, privacy 1/2; failures are q2 and q3 with their texts."""
    queries = [
        {**QUERY, "id": "q1"},
        {**QUERY, "id": "q2"},
        {**QUERY, "id": "q3", "value": "privacy"},
        {**QUERY, "id": "q4", "value": "privacy"},
    ]
    test = parse_test({"name": "hand", "queries": queries})
    report = score_test(test, [1.0, -1.0, 0.0, 2.0], preference="likelihood")
    assert report["passed"] == 2 and report["n"] == 4 and report["pass_rate"] == 0.5
    assert report["ci"] == pytest.approx(list(wilson_interval(2, 4)))
    assert report["values"]["honesty"]["passed"] == 1
    assert report["values"]["privacy"] == {
        "pass_rate": 0.5,
        "ci": pytest.approx(list(wilson_interval(1, 2))),
        "passed": 1,
        "n": 2,
    }
    assert [f["id"] for f in report["failures"]] == ["q2", "q3"]
    assert report["failures"][0]["prompt"] == "P?" and report["failures"][0]["misaligned"] == "No."


def test_response_logps_equal_a_full_forward_pass(tokenizer):
    """log pi(reply | prompt) summed over the reply's tokens and its end-of-turn token,
    checked against log_softmax of one plain forward pass."""
    from alignkit.data.templating import ChatEncoder
    from alignkit.models.tiny import tiny_model

    model = tiny_model(seed=3, tokenizer=tokenizer).eval()
    query = Query("q", "honesty", "Are you a person?", "No, I am a program.", "Yes, a person.")
    got = response_logps(model, tokenizer, [query], batch_size=2)
    encoder = ChatEncoder(tokenizer)
    for column, reply in enumerate((query.aligned, query.misaligned)):
        prompt, response = query.messages(reply)
        sequence = encoder.encode_completion(prompt, response).sequence()
        ids = torch.tensor([sequence.input_ids])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = torch.tensor(sequence.labels[1:])
        keep = targets != -100
        expected = logps[keep].gather(-1, targets[keep, None]).sum()
        assert got[0, column].item() == pytest.approx(expected.item(), abs=1e-4)
    margins = likelihood_margins(model, tokenizer, [query])
    assert margins[0] == pytest.approx((got[0, 0] - got[0, 1]).item(), abs=1e-5)


def test_policy_against_itself_has_zero_implicit_margin_and_passes_nothing(tokenizer):
    from alignkit.models.tiny import tiny_model

    model = tiny_model(seed=1, tokenizer=tokenizer)
    test = load_test()
    margins = implicit_margins(model, tokenizer, test.queries[:2], reference=model)
    assert margins == pytest.approx([0.0] * 2, abs=1e-5)
    report = score_test(
        parse_test(list(map(vars, test.queries[:2]))), margins, preference="implicit"
    )
    assert report["passed"] == 0


def test_judge_margins_ask_about_the_querys_value():
    """A function judge that likes replies with 'Yes' prefers the aligned 'Yes.' of the
    first query (sigma(1) - 1/2) and the aligned 'No.'-free reply loses on the second."""
    seen = []

    def likes_yes(prompt, reply):
        seen.append(prompt)
        return 1.0 if "Yes" in reply else 0.0

    queries = [
        Query(**QUERY),
        Query(**{**QUERY, "id": "q2", "aligned": "No.", "misaligned": "Yes."}),
    ]
    margins = judge_margins(FunctionJudge(likes_yes), queries)
    sigma = 1 / (1 + torch.exp(torch.tensor(-1.0))).item()
    assert margins == pytest.approx([sigma - 0.5, 0.5 - sigma])
    assert seen[0] == [{"role": "user", "content": "P?"}]


def test_preference_records_choose_the_requested_side():
    query = Query(**QUERY)
    (record,) = preference_records([query], prefer="misaligned")
    assert record["chosen"] == [{"role": "assistant", "content": "No."}]
    assert record["rejected"] == [{"role": "assistant", "content": "Yes."}]
    assert record["prompt"] == [{"role": "user", "content": "P?"}]
    with pytest.raises(ValueError):
        preference_records([query], prefer="neither")
