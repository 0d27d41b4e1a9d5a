"""Python functions as judges: `f(prompt, completion) -> float`, given as `module:function`
(or `path/to/file.py:function`), and `load_judge`, which turns any judge spec (reward
function, task oracle, reward model, local or remote LLM judge) into a judge."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
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


def load_judge(spec, **options):
    """A judge from a spec, the one way every command names its feedback:

    - a judge object (returned as is) or a callable `f(prompt, completion) -> float`;
    - `task:NAME`: a built-in task's oracle;
    - `llm:MODEL`: a local LLM judge on any model the loader accepts (options: `device`,
      `dtype`, and `LLMJudge`'s: `question`, `both_orders`, `chain_of_thought`, ...);
    - `openai:BASE_URL`: an OpenAI-compatible server (options: `judge_model`, the
      server's model name; `OpenAIEndpoint`'s: `api_key`, `cache` (a path), `timeout`,
      ...; and `HTTPJudge`'s: `question`, `use_logprobs`, ...);
    - `module:function` or `path/to/file.py:function`;
    - otherwise a reward-model folder (options go to `RewardModelJudge`).
    """
    if hasattr(spec, "judge_pairs") or hasattr(spec, "score_batch"):
        return spec
    if callable(spec):
        return FunctionJudge(spec)
    spec = str(spec)
    for prefix, build in _JUDGES.items():
        if spec.startswith(prefix):
            return build(spec.removeprefix(prefix), **options)
    path = Path(spec)
    if ":" in spec and not path.exists():
        return FunctionJudge(import_function(spec), name=spec)
    from alignkit.feedback.reward_model import RewardModelJudge

    return RewardModelJudge(spec, **options)


def _task_judge(name: str, **_options):
    from alignkit.tasks import get_task

    task = get_task(name)
    return FunctionJudge(task.oracle, name=f"{task.name} oracle")


def _local_llm_judge(model: str, *, device: str = "auto", dtype: str = "auto", **judge_options):
    from alignkit.feedback.llm_judge import LLMJudge
    from alignkit.models.loading import load_model_and_tokenizer

    loaded, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype)
    return LLMJudge(loaded, tokenizer, **_known(LLMJudge, judge_options, f"llm:{model}"))


def _openai_judge(base_url: str, *, judge_model: str | None = None, **options):
    from alignkit.feedback.http import OpenAIEndpoint
    from alignkit.feedback.http_judge import HTTPJudge

    if not judge_model:
        raise AlignkitError(f"openai:{base_url} needs the server's model name: judge_model=NAME")
    options.pop("device", None)  # a remote judge has no local device or dtype
    options.pop("dtype", None)
    endpoint_keys = _parameters(OpenAIEndpoint) - {"base_url", "model"}
    endpoint = OpenAIEndpoint(
        base_url, judge_model, **{k: v for k, v in options.items() if k in endpoint_keys}
    )
    judge_options = {k: v for k, v in options.items() if k not in endpoint_keys}
    return HTTPJudge(endpoint, **_known(HTTPJudge, judge_options, f"openai:{base_url}"))


def _parameters(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _known(cls, options: dict, spec: str) -> dict:
    unknown = set(options) - _parameters(cls)
    if unknown:
        raise AlignkitError(
            f"{spec}: unknown judge option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_parameters(cls) - {'model', 'tokenizer', 'endpoint'}))}"
        )
    return options


# spec prefix -> constructor of the judge it names (the rest of the spec, options)
_JUDGES = {"task:": _task_judge, "llm:": _local_llm_judge, "openai:": _openai_judge}
