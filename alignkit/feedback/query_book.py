"""Labeller queries of an online run, paid for once, within a budget, through the label store.

An online method (`alignkit online-dpo`) asks its labeller questions as it goes: "how
good is this response?" (a score labeller, one call per response) or "which of these two
is better?" (a pairwise judge, one call per pair). Each distinct question is one item of
the run's label store (`alignkit.feedback.label_store`), keyed by a digest of its
content, and each call one request. The book keeps two counts:

- `used`: the distinct questions this run's trajectory has consumed so far, in order.
  Item `position` is the order in which the trajectory first consumed it, so the
  checkpointed `used` is "the store's position": items below it belong to the past of
  that checkpoint; items at or above it were paid for by a run that went further before
  it was killed.
- `calls`: labeller calls ever made for this run (by every process that worked on it),
  counted from the store: each answered or failed attempt, plus any call that was in
  flight when a process died (its answer was never stored, so it may have been paid).

Asking a question (`answer`):

1. consumed before by this trajectory (position < used): the stored answer, free;
2. paid for ahead of the trajectory by a killed run (stored, position >= used): consumed
   now (position = used, used += 1), answered from the store, not asked again. A resumed
   run replays the killed run's rounds with the same seeds, so it meets these questions in
   the same order and its `used` equals the uninterrupted run's;
3. otherwise asked: the item is registered (pending) before the call and its answer (or
   failure) stored in one transaction right after it, so at most the one call in flight is
   lost to a kill. A question whose call was in flight is asked again on resume.

A budget bounds both counts: a group of questions (one prompt's, asked together) is
affordable only if `used` and `calls` both stay within it, so a resumed run takes the same
budget decisions as the uninterrupted one while paid calls never exceed the budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.feedback.label_store import DONE, FAILED, PENDING, LabelStore

# The reason recorded for a call whose answer a killed process never stored.
IN_FLIGHT = "in flight when the run stopped"


def query_key(kind: str, content: Any) -> str:
    """The store key of a question: its kind and a digest of its content (JSON)."""
    text = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class Outcome:
    """One question's answer (None when the labeller failed) and whether this call of
    `answer` paid for it (a labeller call made now)."""

    answer: Any
    paid: bool
    failure: str | None = None


class QueryBook:
    """The label store of the run in `run_dir` as a budgeted question book (see the
    module docstring). `labeller` names the labeller (a resume with another is refused);
    `budget`: the most calls the run may make (None: no limit); `used`: the trajectory's
    position, from the checkpoint being resumed (0 for a fresh run)."""

    def __init__(self, run_dir: str | Path, labeller: str, budget: int | None, used: int = 0):
        self.store = LabelStore(run_dir, {"method": "online", "labeller": labeller})
        self.budget = budget
        self.used = used
        self._items = {item.key: item for item in self.store.items()}
        in_flight = [key for key, item in self._items.items() if item.status == PENDING]
        for key in in_flight:  # asked, but no answer stored: count the call, ask again
            self.store.fail(key, IN_FLIGHT)
        if in_flight:
            self._items.update({item.key: item for item in self.store.items(in_flight)})
        self.calls = sum(item.attempts for item in self._items.values())

    def close(self) -> None:
        self.store.close()

    # ---- budget --------------------------------------------------------------------

    def _consumed(self, key: str) -> bool:
        item = self._items.get(key)
        return item is not None and item.position < self.used

    def _needs_call(self, key: str) -> bool:
        item = self._items.get(key)
        return item is None or (item.status != DONE and item.failure == IN_FLIGHT)

    def affordable(self, keys: Sequence[str]) -> bool:
        """Whether asking all of `keys` (distinct) stays within the budget."""
        if self.budget is None:
            return True
        new = [key for key in dict.fromkeys(keys) if not self._consumed(key)]
        calls = sum(self._needs_call(key) for key in new)
        return self.used + len(new) <= self.budget and self.calls + calls <= self.budget

    @property
    def remaining(self) -> int | None:
        """Questions the trajectory may still consume (None: no budget). Calls paid ahead
        by a killed run are not subtracted: the resumed run consumes them for free, and
        `affordable` keeps new calls within the budget."""
        if self.budget is None:
            return None
        return max(0, self.budget - self.used)

    # ---- asking --------------------------------------------------------------------

    def answer(
        self, key: str, request: Any, ask: Callable[[], Any], name: str = "label"
    ) -> Outcome:
        """The answer to question `key` (see the module docstring). `ask()` calls the
        labeller and returns a JSON-able answer; it raises `QueryFailed` for an answer
        that is no label (recorded as a failure, never used)."""
        item = self._items.get(key)
        if item is not None and item.position < self.used:
            return self._replay(item)
        if item is not None and not self._needs_call(key):  # paid ahead of the trajectory
            self.store.add_items([(key, self.used, item.inputs)])  # consumed here, now
            self.used += 1
            self._items[key] = self.store.item(key)
            return self._replay(item)
        self.store.add_items([(key, self.used, request)])  # registered before the call
        self.used += 1
        self.calls += 1
        try:
            answer = ask()
        except QueryFailed as failure:
            self.store.answer(key, name, request, None, failure.reason)
            self._items[key] = self.store.item(key)
            return Outcome(None, paid=True, failure=failure.reason)
        self.store.answer(key, name, request, answer)  # one commit, right after the call
        self._items[key] = self.store.item(key)
        return Outcome(answer, paid=True)

    @staticmethod
    def _replay(item) -> Outcome:
        if item.status == DONE:
            return Outcome(item.result, paid=False)
        if item.status == FAILED:
            return Outcome(None, paid=False, failure=item.failure)
        raise AssertionError(f"item {item.key} is pending")  # pending ones were failed in __init__


class QueryFailed(Exception):
    """The labeller gave no usable answer (`reason`): recorded, never used as a label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
