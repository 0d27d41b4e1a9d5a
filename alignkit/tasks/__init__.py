"""Built-in tasks: prompts plus an oracle reward, for the quickstart, benchmarks and tests."""

from __future__ import annotations

from alignkit.errors import AlignkitError

TASKS = ("sentiment",)


def get_task(name: str):
    if name == "sentiment":
        from alignkit.tasks import sentiment

        return sentiment.TASK
    raise AlignkitError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
