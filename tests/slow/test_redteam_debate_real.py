"""Red teaming and debate with the real SmolLM2-135M-Instruct (slow: `make test-slow`).

The same model attacks, answers and judges (a 135M model: the point is that the whole
pipeline runs on a real chat model and what its numbers are, not that they are good).
Numbers are printed (run with -s) and recorded in docs/red_teaming.md."""

import json

import pytest

from alignkit.evaluate.debate import (
    DebateSettings,
    load_debate_judge,
    load_questions,
    run_debate_eval,
)
from alignkit.evaluate.redteam import (
    HARM_QUESTION,
    RedTeamSettings,
    RefusalRulesClassifier,
    harm_rating_classifier,
    red_team,
)
from alignkit.evaluate.refusal import rate_summary
from alignkit.feedback.generators import load_generator
from alignkit.feedback.llm_judge import LLMJudge

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    return load_generator(MODEL, dtype="float32")


def test_red_team_zero_shot_and_few_shot(smollm2):
    """16 questions per method; the classifier is the model's own 1-10 harm rating, and
    the same answers are also read by the refusal rules (answered = failure)."""
    classifier = harm_rating_classifier(
        LLMJudge(smollm2.model, smollm2.tokenizer, rating_question=HARM_QUESTION)
    )
    settings = RedTeamSettings(n=16, attacker_max_new_tokens=40, target_max_new_tokens=48)
    report, attempts = red_team(smollm2, smollm2, classifier, ["zero-shot", "few-shot"], settings)
    rules = RefusalRulesClassifier()
    numbers = {}
    for method, row in report.items():
        asked = [a for a in attempts if a.method == method and a.question]
        answered = rules.failure_scores([a.question for a in asked], [a.answer for a in asked])
        numbers[method] = {
            "asr_judge": row["asr"],
            "ci": row["ci"],
            "mean_failure_score": row["mean_score"],
            "score_ci": row["score_ci"],
            "asr_answered_by_rules": rate_summary([s == 1.0 for s in answered]),
            "self_bleu": row["self_bleu"],
            "distinct": row["distinct"],
            "empty": row["empty"],
        }
        assert row["n"] + row["undecided"] + row["empty"] == 16
        assert row["self_bleu"] is not None and 0.0 <= row["self_bleu"] <= 100.0
        assert 0.0 <= row["mean_score"] <= 1.0
    few = [a for a in attempts if a.method == "few-shot"]
    assert all(a.examples for a in few)
    print("\nredteam-real", json.dumps(numbers))


def test_debate_against_no_debate(smollm2):
    """6 questions of each kind, 2 statements per debate; the judge is the same model
    without the passage."""
    questions = load_questions()
    chosen = []
    for kind in ("fact", "arithmetic", "reading"):
        chosen += [q for q in questions if q.kind == kind][:6]
    judge = load_debate_judge(MODEL, debater=smollm2, debater_spec=MODEL)
    summary, results = run_debate_eval(
        smollm2, judge, chosen, DebateSettings(turns=2, max_new_tokens=48)
    )
    numbers = {
        condition: {
            "accuracy": summary[condition]["accuracy"],
            "ci": summary[condition]["ci"],
            "ties": summary[condition]["ties"],
            "mean_p_correct": summary[condition]["mean_p_correct"],
            "by_kind": {k: v["accuracy"] for k, v in summary[condition]["by_kind"].items()},
        }
        for condition in ("no_debate", "debate")
    }
    for condition in ("no_debate", "debate"):
        assert summary[condition]["n"] + summary[condition]["failed"] == 18
    assert all(len(r.transcript) == 2 and all(s["text"] for s in r.transcript) for r in results)
    print("\ndebate-real", json.dumps(numbers))
    print("debate-example", json.dumps(results[-1].record()))
