"""Python functions as judges: `f(prompt, completion) -> float`, given as `module:function`
(or `path/to/file.py:function`), and `load_judge`, which turns any reward source spec
into a judge."""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.feedback.judge import ScoringJudge, Text


class FunctionJudge(ScoringJudge):
    """Scores from `fn(prompt, completion) -> float`; completions are plain text (the
    assistant's reply for chat prompts)."""

    def __init__(self, fn: Callable[[Text, str], float], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        scores = []
        for prompt, response in zip(prompts, responses, strict=True):
            text = response[-1]["content"] if isinstance(response, list) else response
            value = self.fn(prompt, text)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise AlignkitError(
                    f"reward function {self.name} returned {value!r}, not a number"
                ) from None
            if not math.isfinite(value):
                raise AlignkitError(
                    f"reward function {self.name} returned {value} for {text[:60]!r}"
                )
            scores.append(value)
        return scores


def import_function(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise AlignkitError(f"expected 'module:function', got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AlignkitError(f"{spec}: no such file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise AlignkitError(f"{spec}: cannot import {module_name} ({err})") from err
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise AlignkitError(f"{spec}: {module_name} has no function {attribute!r}")
    return fn


def load_judge(spec, **reward_model_options):
    """A judge from a reward source: a judge object, a callable, `module:function`,
    `task:NAME` (a built-in task's oracle), or a reward-model folder."""
    if hasattr(spec, "score_batch"):
        return spec
    if callable(spec):
        return FunctionJudge(spec)
    spec = str(spec)
    if spec.startswith("task:"):
        from alignkit.tasks import get_task

        task = get_task(spec.removeprefix("task:"))
        return FunctionJudge(task.oracle, name=f"{task.name} oracle")
    path = Path(spec)
    if ":" in spec and not path.exists():
        return FunctionJudge(import_function(spec), name=spec)
    from alignkit.feedback.reward_model import RewardModelJudge

    return RewardModelJudge(spec, **reward_model_options)
