"""The budgeted question book of online methods (alignkit.feedback.query_book), on a real
SQLite label store: answers are paid once, replayed in order on resume, calls in flight
at a kill are counted, and the budget bounds both the trajectory and the paid calls."""

import pytest

from alignkit.feedback.query_book import IN_FLIGHT, QueryBook, QueryFailed, query_key


class Labeller:
    def __init__(self):
        self.calls = []

    def __call__(self, question):
        def ask():
            self.calls.append(question)
            if question.startswith("bad"):
                raise QueryFailed("malformed")
            return {"score": len(question)}

        return ask


def ask(book, labeller, question):
    return book.answer(query_key("score", question), {"q": question}, labeller(question))


def test_each_question_is_paid_once_and_replayed_free(tmp_path):
    labeller = Labeller()
    book = QueryBook(tmp_path, "f", budget=None)
    first = ask(book, labeller, "abc")
    again = ask(book, labeller, "abc")
    assert first.answer == again.answer == {"score": 3}
    assert (first.paid, again.paid) == (True, False)
    failed = ask(book, labeller, "bad")
    assert failed.answer is None and failed.failure == "malformed"
    assert ask(book, labeller, "bad").paid is False  # a failure is not bought again
    assert labeller.calls == ["abc", "bad"] and book.used == book.calls == 2
    book.close()


def test_a_resumed_trajectory_consumes_answers_paid_ahead_in_order(tmp_path):
    """A run paid for a, b, c, d; its checkpoint said used=2. The resumed run (used=2)
    reads a, b as its past, c and d as paid ahead (consumed now, not asked), and pays for
    e only: its positions equal the straight run's."""
    labeller = Labeller()
    book = QueryBook(tmp_path, "f", budget=5)
    for q in "abcd":
        ask(book, labeller, q)
    book.close()
    resumed = QueryBook(tmp_path, "f", budget=5, used=2)
    assert resumed.remaining == 3 and resumed.calls == 4
    assert resumed.affordable([query_key("score", q) for q in "cde"])
    assert not resumed.affordable([query_key("score", q) for q in "cdef"])
    outcomes = [ask(resumed, labeller, q) for q in "acde"]
    assert [o.paid for o in outcomes] == [False, False, False, True]
    assert labeller.calls == list("abcde") and resumed.used == resumed.calls == 5
    positions = {i.key: i.position for i in resumed.store.items()}
    assert [positions[query_key("score", q)] for q in "abcde"] == [0, 1, 2, 3, 4]
    resumed.close()


def test_a_call_in_flight_at_a_kill_is_counted_and_asked_again(tmp_path):
    book = QueryBook(tmp_path, "f", budget=3)
    book.store.add_items([(query_key("score", "x"), 0, {"q": "x"})])  # registered, no answer
    book.close()
    labeller = Labeller()
    resumed = QueryBook(tmp_path, "f", budget=3)
    assert resumed.calls == 1  # the lost call may have been paid
    assert resumed.store.item(query_key("score", "x")).failure == IN_FLIGHT
    assert ask(resumed, labeller, "x").answer == {"score": 1}
    assert resumed.calls == 2 and resumed.used == 1
    # paid calls stay within the budget: 2 made, so only 1 more question can be asked
    assert resumed.affordable([query_key("score", "y")])
    assert not resumed.affordable([query_key("score", q) for q in "yz"])
    resumed.close()


def test_another_labeller_cannot_resume_the_store(tmp_path):
    from alignkit.feedback.label_store import StoreError

    QueryBook(tmp_path, "f", budget=None).close()
    with pytest.raises(StoreError, match="different settings"):
        QueryBook(tmp_path, "g", budget=None)
