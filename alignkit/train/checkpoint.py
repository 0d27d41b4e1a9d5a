"""Checkpoints: `output_dir/checkpoints/step-N/`, written atomically.

Each holds the trainable weights (`weights.safetensors`; for LoRA only the adapters),
`optimizer.pt`, `scheduler.pt`, `rng.pt` (every process's RNG states) and
`trainer_state.json` (step, tokens seen, data-order fingerprint). A checkpoint appears
under its final name only once complete, so a crash mid-save leaves the previous one as
the newest; `resume=auto` picks that one up.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.errors import AlignkitError
from alignkit.fsutil import atomic_directory

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    step: int = 0
    tokens_seen: int = 0
    data_fingerprint: dict[str, Any] = field(default_factory=dict)


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporaries never match `step-N`)."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """`auto` -> newest checkpoint (or None: start fresh); a path -> that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise AlignkitError(f"resume: {path} is not a checkpoint folder (no trainer_state.json)")
    return path


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def capture_rng() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and lists only, so `torch.load(weights_only=True)` reads them."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    plain = {
        "torch": state["torch"],
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if "cuda" in state:
        plain["cuda"] = state["cuda"]
    return plain


def _rng_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = plain["python"]
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    state = {
        "torch": plain["torch"],
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
    }
    if "cuda" in plain:
        state["cuda"] = plain["cuda"]
    return state


def save_checkpoint(
    output_dir: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: TrainerState,
    rng_states: list[dict],
    extra: dict | None = None,
    extra_tensors: dict | None = None,
) -> Path:
    """Write checkpoints/step-N atomically (call on the main process only). `extra`: a
    JSON-able dict of further state (e.g. a KL controller), read back by `load_extra`;
    `extra_tensors`: further state holding tensors (e.g. an ensemble's state_dict with its
    optimizer), nested dicts/lists of tensors and numbers, read back by `load_extra_tensors`."""
    target = checkpoints_dir(output_dir) / f"step-{state.step}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(trainable_state(model), str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save([_rng_to_plain(s) for s in rng_states], tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if extra is not None:
            (tmp / "extra.json").write_text(json.dumps(extra, indent=2))
        if extra_tensors is not None:
            torch.save(extra_tensors, tmp / "extra.pt")
    return target


def load_extra(path: Path) -> dict:
    file = Path(path) / "extra.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_extra_tensors(path: Path) -> dict:
    file = Path(path) / "extra.pt"
    return torch.load(file, weights_only=True) if file.is_file() else {}


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, rank: int = 0
) -> TrainerState:
    """Restore weights, optimizer, scheduler and this process's RNG from `path`."""
    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in weights]
    if missing:
        raise AlignkitError(
            f"{path}: checkpoint does not match the model (missing e.g. {missing[0]})"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    restore_rng(_rng_from_plain(rng[rank] if rank < len(rng) else rng[0]))
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))


def resume_checkpoint(
    path: Path, model, optimizer, scheduler, fingerprint: dict, rank: int = 0
) -> TrainerState:
    """`load_checkpoint`, refusing a checkpoint trained on other data or settings."""
    state = load_checkpoint(path, model, optimizer, scheduler, rank)
    if state.data_fingerprint != fingerprint:
        raise AlignkitError(
            f"cannot resume from {path}: it was trained with {state.data_fingerprint}, this run has "
            f"{fingerprint}; use the same data, batch_size and seed, or a new output_dir"
        )
    return state


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
