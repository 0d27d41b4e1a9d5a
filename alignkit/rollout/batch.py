"""Sampled completions as training rows, and their teacher-forced log-probs and values.

A rollout's rows are `prompt + completion` with each prompt unpadded, right-padded to a
rectangle: under causal attention nothing real sees the pads after it, so no mask is
needed, and the log-probs equal those of the left-padded sampler (tested). RL (old,
reference and current log-probs, critic values) and evaluation (KL to a reference)
read completions through these functions.
"""

from __future__ import annotations

import torch

from alignkit.data.collators import PaddingCollator
from alignkit.data.templating import IGNORE_INDEX
from alignkit.rollout.sampling import Rollout


def completion_rows(rollout: Rollout, prompt_ids: list[list[int]], pad_id: int) -> dict:
    """Training rows of R sampled completions.

    Returns input_ids (R, T) prompt + completion right-padded; labels (R, T) with
    IGNORE_INDEX on prompt and pads; index (R, C): the position, in the (R, T-1)
    per-token outputs, of each completion token (0 where masked); mask (R, C).
    """
    completions = rollout.completion_lists()
    collate = PaddingCollator(pad_id)
    batch = collate(
        [
            {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}
            for p, c in zip(prompt_ids, completions, strict=True)
        ]
    )
    width = rollout.completion_ids.shape[1]
    starts = torch.tensor([len(p) - 1 for p in prompt_ids])  # logps[t] predicts token t+1
    index = starts[:, None] + torch.arange(width)[None, :]
    mask = rollout.completion_mask.clone()
    index = torch.where(mask.bool(), index, torch.zeros_like(index))
    return {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "index": index,
        "mask": mask,
    }


def completion_logps(logps_module, rows: dict) -> torch.Tensor:
    """(R, C) log-probs of each completion token under `logps_module` (a `CausalLMLogps`
    or a wrapper of one), 0 where masked out."""
    logps, _mask = logps_module(input_ids=rows["input_ids"], labels=rows["labels"])
    return logps.gather(1, rows["index"]) * rows["mask"]


def completion_values(values_module, rows: dict) -> torch.Tensor:
    """(R, C) critic values at the position before each completion token: the state
    from which that token was chosen. `values_module(input_ids (R, T)) -> (R, T)`."""
    values = values_module(rows["input_ids"])[:, :-1]
    return values.gather(1, rows["index"]) * rows["mask"]
