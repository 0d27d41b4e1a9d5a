"""What a report is made of, read from run folders and result files.

`collect(paths)` walks each given folder (a training run, a quickstart folder holding
several runs, or any folder of results) and sorts what it finds by what the files hold,
not by their names alone:

| found | kind |
|---|---|
| a folder with `metrics.jsonl` | a training run (`config.yaml`, `samples.jsonl` beside it) |
| JSON with `metrics` and `reference_metrics` | an `alignkit eval` result (+ its samples) |
| JSON with `families` and `refusal` | an `alignkit probe` result |
| `*.token_rewards.json` | per-token implicit reward maps |
| `summary.json` with `policies` | a quickstart summary (+ `samples_before_after.jsonl`) |

Nothing here draws or formats: see figures.py and render.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignkit.errors import AlignkitError

# folders inside a run that never hold results of their own
_SKIP_DIRS = {"checkpoints", "final", "critic", "ref_logps", "tiny-model", "__pycache__"}
_MAX_DEPTH = 3  # a quickstart folder holds runs one level down; leave room for nesting


@dataclass
class Run:
    """A training run folder. metrics: one dict per logged step (metrics.jsonl);
    samples: generations logged during training (samples.jsonl)."""

    name: str
    path: Path
    config_text: str = ""
    metrics: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return yaml.safe_load(self.config_text) or {} if self.config_text else {}


@dataclass
class Result:
    """One result file: `data` is its JSON; `samples` the records beside it, if any."""

    name: str
    path: Path
    data: dict | list
    samples: list[dict] = field(default_factory=list)


@dataclass
class ReportInputs:
    runs: list[Run] = field(default_factory=list)
    evaluations: list[Result] = field(default_factory=list)
    probes: list[Result] = field(default_factory=list)
    token_maps: list[Result] = field(default_factory=list)
    summaries: list[Result] = field(default_factory=list)

    def empty(self) -> bool:
        return not any((self.runs, self.evaluations, self.probes, self.token_maps, self.summaries))


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a line cut off by a crash (the last one) is left out."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
    return records


def _is_eval(data) -> bool:
    return isinstance(data, dict) and "metrics" in data and "reference_metrics" in data


def _is_probe(data) -> bool:
    return isinstance(data, dict) and "families" in data and "refusal" in data


def _is_summary(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("policies"), dict)


def _is_token_maps(data) -> bool:
    return isinstance(data, list) and all(
        isinstance(m, dict) and "tokens" in m and "values" in m for m in data
    )


def _eval_samples(path: Path, data: dict) -> list[dict]:
    name = data.get("samples")
    return read_jsonl(path.with_name(name)) if isinstance(name, str) else []


def _summary_samples(path: Path, data: dict) -> list[dict]:
    return read_jsonl(path.with_name("samples_before_after.jsonl"))


# (is this kind?, ReportInputs list it goes to, how its samples are found)
_RESULT_KINDS: list[tuple[Callable, str, Callable]] = [
    (_is_eval, "evaluations", _eval_samples),
    (_is_probe, "probes", lambda path, data: []),
    (_is_summary, "summaries", _summary_samples),
    (_is_token_maps, "token_maps", lambda path, data: []),
]


def _add_result(inputs: ReportInputs, path: Path, name: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False  # not a result file (or one being written): not ours to judge
    for is_kind, bucket, samples in _RESULT_KINDS:
        if is_kind(data):
            getattr(inputs, bucket).append(Result(name, path, data, samples(path, data)))
            return True
    return False


def _add_run(inputs: ReportInputs, folder: Path, name: str) -> None:
    config = folder / "config.yaml"
    inputs.runs.append(
        Run(
            name=name,
            path=folder,
            config_text=config.read_text(encoding="utf-8") if config.is_file() else "",
            metrics=read_jsonl(folder / "metrics.jsonl"),
            samples=read_jsonl(folder / "samples.jsonl"),
        )
    )


def _walk(inputs: ReportInputs, folder: Path, label: str, depth: int) -> None:
    if (folder / "metrics.jsonl").is_file():
        _add_run(inputs, folder, label)
    for path in sorted(folder.iterdir()):
        child = f"{label}/{path.name}" if label else path.name
        if path.is_file() and path.suffix == ".json" and not path.name.startswith("."):
            _add_result(inputs, path, child.removesuffix(".json"))
        elif path.is_dir() and path.name not in _SKIP_DIRS and depth < _MAX_DEPTH:
            _walk(inputs, path, child, depth + 1)


def collect(paths: list[str | Path]) -> ReportInputs:
    """Everything a report shows, from run folders and/or result files."""
    inputs = ReportInputs()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise AlignkitError(f"{path}: no such run folder or result file")
        if path.is_file():
            if not _add_result(inputs, path, path.stem):
                raise AlignkitError(
                    f"{path}: not a result alignkit can report (expected the JSON of "
                    "alignkit eval or probe, a quickstart summary, or token reward maps)"
                )
        else:
            _walk(inputs, path, path.resolve().name, 0)
    return inputs
