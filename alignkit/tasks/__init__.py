"""Built-in tasks: prompts plus an oracle reward, for the quickstart, benchmarks and tests."""

from __future__ import annotations

import importlib

from alignkit.errors import AlignkitError

# task name -> (module, attribute) of its Task
_TASKS = {
    "sentiment": ("alignkit.tasks.sentiment", "TASK"),
    "sentiment-chat": ("alignkit.tasks.sentiment", "CHAT_TASK"),
    "hh-mini": ("alignkit.tasks.hh_mini", "TASK"),
}
TASKS = tuple(_TASKS)


def get_task(name: str):
    if name not in _TASKS:
        raise AlignkitError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    module, attribute = _TASKS[name]
    return getattr(importlib.import_module(module), attribute)
