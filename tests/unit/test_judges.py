"""Reward sources behind one judge interface: functions, built-in task oracles."""

import pytest

from alignkit.errors import AlignkitError
from alignkit.feedback.function import FunctionJudge, import_function, load_judge
from alignkit.feedback.judge import Judge


def test_function_judge_scores_and_compares():
    judge = FunctionJudge(lambda prompt, completion: completion.count("!"))
    assert isinstance(judge, Judge)
    assert judge.score_batch(["p", "p"], ["hi!", "hi!!!"]) == [1.0, 3.0]
    assert judge.compare("p", "a!!", "a") == pytest.approx(1 / (1 + 2.718281828459045**-2))
    chat_reply = [{"role": "assistant", "content": "yes!"}]
    assert judge.score([{"role": "user", "content": "q"}], chat_reply) == 1.0


def test_function_judge_rejects_non_numbers():
    with pytest.raises(AlignkitError, match="not a number"):
        FunctionJudge(lambda p, c: "high").score("p", "c")
    with pytest.raises(AlignkitError, match="nan"):
        FunctionJudge(lambda p, c: float("nan")).score("p", "c")


def test_load_judge_from_specs(tmp_path):
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def length(prompt, completion):\n    return len(completion)\n")
    assert load_judge(f"{reward_file}:length").score("p", "abcd") == 4.0
    assert load_judge("alignkit.tasks.sentiment:oracle").score("p", "I love it") > 0.5
    assert load_judge("task:sentiment").score("p", "awful, terrible") < -0.5
    with pytest.raises(AlignkitError, match="no function"):
        import_function("alignkit.tasks.sentiment:missing")
    with pytest.raises(AlignkitError, match="unknown task"):
        load_judge("task:nope")


def test_sentiment_task_prompts_and_oracle():
    from alignkit.tasks.sentiment import HELD_OUT_FILMS, oracle, prompts

    train, test = prompts("train"), prompts("test")
    assert len(train) == 320 and len(test) == 80 and len(set(train)) == 320
    assert not any(film in p for p in train for film in HELD_OUT_FILMS)
    assert all(any(film in p for film in HELD_OUT_FILMS) for p in test)
    assert oracle("x", "A wonderful, moving film.") > 0.5 > -0.5 > oracle("x", "Dull and awful.")
    assert oracle("x", "   ") == 0.0


def test_sentiment_chat_task_asks_for_the_same_openings_in_a_chat():
    from alignkit.tasks import get_task
    from alignkit.tasks.sentiment import prompts

    chat = get_task("sentiment-chat")
    test = chat.prompts("test")
    assert test[0] == [
        {"role": "user", "content": f"Continue this movie review: {prompts('test')[0]}"}
    ]
    assert len(test) == 80 and chat.oracle("x", "A wonderful film.") > 0.5
    assert load_judge("task:sentiment-chat").score(test[0], "Dull and awful.") < -0.5
    with pytest.raises(AlignkitError, match="built-in tasks: sentiment, sentiment-chat"):
        get_task("imdb")
