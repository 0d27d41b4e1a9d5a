"""Where metrics go: `metrics.jsonl` always, the console, and optional tracking tools.

The console shows a progress bar (loss, tokens/s, ETA) when stderr is a terminal and
plain log lines otherwise (CI, files). TensorBoard, Weights & Biases and MLflow are used
only when asked for in `loggers` and installed; W&B runs offline unless the user set
WANDB_MODE, so nothing needs the network.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit.train")


class MetricsSink:
    def __init__(
        self,
        output_dir: Path,
        config_dict: dict,
        loggers: list[str],
        *,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.total_steps = total_steps
        self.started = time.perf_counter()
        self.start_step = start_step
        self.backends = (
            [_BACKENDS[name](Path(output_dir), config_dict) for name in loggers] if enabled else []
        )
        self.bar = None
        if enabled:
            truncate_after(self.path, start_step)
            if sys.stderr.isatty():
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total_steps, initial=start_step, desc="train", dynamic_ncols=True
                )

    def step(self, step: int, metrics: dict[str, Any] | None, *, advance: bool = True) -> None:
        """Advance the bar (unless `advance=False`); with `metrics`, also record them."""
        if not self.enabled:
            return
        if self.bar is not None and advance:
            self.bar.update(1)
        if metrics is None:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        for backend in self.backends:
            backend.log(step, record)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record.get('loss', float('nan')):.4f}",
                tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                refresh=False,
            )
        else:
            log.info(
                "step %d/%d  %s  eta %s", step, self.total_steps, _format(record), self._eta(step)
            )

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        seconds = (time.perf_counter() - self.started) / done * (self.total_steps - step)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for backend in self.backends:
            backend.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value


def _format(record: dict) -> str:
    parts = []
    for key, value in record.items():
        if key == "step":
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop JSONL lines (each with a "step") written after the checkpoint's
    step: they will be written again."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AlignkitError(
            f"logger '{package}' was asked for but is not installed: pip install {package}"
        ) from None


class _TensorBoard:
    def __init__(self, output_dir: Path, config: dict):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, step: int, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output_dir: Path, config: dict):
        wandb = _require("wandb", "wandb")
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="alignkit", dir=str(output_dir), config=config)

    def log(self, step: int, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, output_dir: Path, config: dict):
        self.mlflow = _require("mlflow", "mlflow")
        if "MLFLOW_TRACKING_URI" not in os.environ:
            self.mlflow.set_tracking_uri((output_dir / "mlruns").resolve().as_uri())
        self.mlflow.start_run()
        self.mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, step: int, record: dict) -> None:
        self.mlflow.log_metrics(
            {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
            step=step,
        )

    def close(self) -> None:
        self.mlflow.end_run()


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}
