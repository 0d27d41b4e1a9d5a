"""Red teaming: reading questions, the stochastic few-shot draw, classifiers, and the
per-method report, with a scripted attacker and target whose outputs are known."""

import math

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.evaluate.intervals import wilson_interval
from alignkit.evaluate.metrics import self_bleu
from alignkit.evaluate.redteam import (
    FEW_SHOT_INSTRUCTION,
    Attempt,
    FailureClassifier,
    RedTeamSettings,
    RefusalRulesClassifier,
    _sigmoid_of_negative,
    draw_examples,
    extract_question,
    load_classifier,
    rating_to_failure,
    red_team,
    summarise,
)


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("1. Why are you so rude?\n2. Another one?", "Why are you so rude?"),
        ('  "Is my cooking bad?"  ', "Is my cooking bad?"),
        ("\n\nQuestion: What do you hate?", "What do you hate?"),
        ("- Who is the worst singer?", "Who is the worst singer?"),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_extract_question(text, question):
    assert extract_question(text) == question


def test_long_questions_are_cut():
    assert len(extract_question("why " * 200)) == 300


def test_few_shot_draw_follows_exp_score_over_temperature():
    """Two questions with scores 1 and 0 at T = 0.1: the first is drawn with probability
    e^10 / (e^10 + 1) = 0.99995; at T = 1, e / (e + 1) = 0.731 (checked to 3 sigma)."""
    pool = [("hit?", 1.0), ("miss?", 0.0)]
    rng = np.random.default_rng(0)
    draws = [draw_examples(pool, 1, 1.0, rng)[0] for _ in range(4000)]
    p = math.e / (math.e + 1)
    share = draws.count("hit?") / len(draws)
    assert abs(share - p) < 3 * math.sqrt(p * (1 - p) / len(draws))
    cold = [draw_examples(pool, 1, 0.1, rng)[0] for _ in range(500)]
    assert cold.count("hit?") >= 499


def test_few_shot_draw_is_distinct_and_skips_empty_questions():
    pool = [("a?", 0.2), ("a?", 0.9), ("", 1.0), ("b?", 0.1)]
    drawn = draw_examples(pool, 5, 0.1, np.random.default_rng(1))
    assert sorted(drawn) == ["a?", "b?"]
    assert draw_examples([("", 1.0)], 3, 0.1, np.random.default_rng(1)) == []


def test_summary_from_hand_made_attempts():
    """4 asked questions (2 failures, 1 undecided) and 1 empty one: ASR 2/3."""
    attempts = [
        Attempt("zero-shot", "x", "Why?", "a", 0.9, True),
        Attempt("zero-shot", "x", "Why?", "b", 0.7, True),
        Attempt("zero-shot", "x", "How so?", "c", 0.1, False),
        Attempt("zero-shot", "x", "Where?", "d", None, None),
        Attempt("zero-shot", "", ""),
    ]
    report = summarise(attempts)
    assert (report["k"], report["n"], report["empty"], report["undecided"]) == (2, 3, 1, 1)
    assert report["asr"] == pytest.approx(2 / 3)
    assert report["ci"] == pytest.approx(list(wilson_interval(2, 3)))
    assert report["mean_score"] == pytest.approx((0.9 + 0.7 + 0.1) / 3)
    assert report["self_bleu"] == pytest.approx(self_bleu(["Why?", "Why?", "How so?", "Where?"]))
    assert report["distinct"] == pytest.approx(3 / 4)
    assert summarise([Attempt("zero-shot", "", "")])["asr"] is None


def test_classifier_specs_and_score_transforms():
    assert isinstance(load_classifier("refusal"), RefusalRulesClassifier)
    rules = load_classifier("refusal")
    assert rules.failure_scores(["q", "q"], ["I can't help with that.", "Sure, here it is."]) == [
        0.0,
        1.0,
    ]
    function = load_classifier("tests.unit.test_redteam:mentions_bad")
    assert isinstance(function, FailureClassifier)
    assert function.failure_scores(["q", "q"], ["bad answer", "fine"]) == [1.0, 0.0]
    assert rating_to_failure(1.0) == 0.0 and rating_to_failure(10.0) == 1.0
    assert rating_to_failure(5.5) == pytest.approx(0.5)
    assert _sigmoid_of_negative(0.0) == 0.5
    assert _sigmoid_of_negative(2.0) == pytest.approx(1 / (1 + math.exp(2.0)))
    assert _sigmoid_of_negative(-800.0) == 1.0  # no overflow
    assert load_classifier(rules) is rules


def mentions_bad(question, answer):
    return 1.0 if "bad" in answer else 0.0


class ScriptedAttacker:
    """Zero-shot: sample k is question 'Q{k} bad?' for even k, 'Q{k} good?' for odd k.
    Few-shot: the first example shown, repeated as the new question."""

    def __init__(self):
        self.prompts = []

    def generate(
        self, conversations, *, n=1, max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None
    ):
        self.prompts.extend(c[-1]["content"] for c in conversations)
        replies = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            if "1. " in text:
                replies.append([text.split("1. ")[1].split("\n")[0]] * n)
            else:
                replies.append([f"1. Q{k} {'bad' if k % 2 == 0 else 'good'}?" for k in range(n)])
        return replies


class EchoTarget:
    def generate(self, conversations, *, n=1, max_new_tokens=64, temperature=1.0, seed=None):
        return [[f"You asked: {c[-1]['content']}"] * n for c in conversations]


def test_red_team_zero_and_few_shot_with_known_outputs():
    """Zero-shot: questions Q0..Q7, the even ones fail (ASR 1/2). Few-shot draws its
    examples from them with T = 0.1, so nearly always a failing one first, and copies it."""
    attacker = ScriptedAttacker()
    settings = RedTeamSettings(n=8, examples=2)
    report, attempts = red_team(
        attacker, EchoTarget(), load_classifier(mentions_bad), ["zero-shot", "few-shot"], settings
    )
    assert report["zero-shot"]["asr"] == 0.5 and report["zero-shot"]["n"] == 8
    assert report["few-shot"]["asr"] >= 0.75
    few = [a for a in attempts if a.method == "few-shot"]
    assert len(few) == 8 and all(len(a.examples) == 2 for a in few)
    zero_questions = {a.question for a in attempts if a.method == "zero-shot"}
    assert all(set(a.examples) <= zero_questions for a in few)
    assert attacker.prompts[1] == FEW_SHOT_INSTRUCTION.format(
        examples="\n".join(f"{i}. {q}" for i, q in enumerate(few[0].examples, start=1))
    )
    assert few[0].answer == f"You asked: {few[0].question}"


def test_few_shot_alone_still_runs_its_zero_shot_pool_and_reports_it():
    report, attempts = red_team(
        ScriptedAttacker(), EchoTarget(), load_classifier(mentions_bad), ["few-shot"],
        RedTeamSettings(n=4),
    )  # fmt: skip
    assert list(report) == ["few-shot", "zero-shot (few-shot pool)"]
    assert [a.method for a in attempts][:4] == ["zero-shot"] * 4


def test_unknown_method_and_rl_without_a_trained_attacker_are_errors():
    with pytest.raises(AlignkitError, match="unknown red-team method"):
        red_team(ScriptedAttacker(), EchoTarget(), load_classifier("refusal"), ["zero"])
    with pytest.raises(AlignkitError, match="method rl needs rl_attacker"):
        red_team(ScriptedAttacker(), EchoTarget(), load_classifier("refusal"), ["rl"])
