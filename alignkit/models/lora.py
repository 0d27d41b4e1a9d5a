"""LoRA through PEFT, configured by the `lora:` config key."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.ops.modules import unwrap


@dataclass
class LoraSettings:
    """`lora: {r, alpha, dropout, target_modules}` (DESIGN "Common config keys").

    r: rank of the update matrices. alpha: scaling numerator (the update is scaled by
    alpha / r). dropout: dropout on the LoRA input. target_modules: module names to adapt,
    or "all-linear" for every linear layer except the output head.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


def apply_lora(model, settings: LoraSettings, *, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with fresh LoRA adapters; only the adapters are trainable.

    `task_type="SEQ_CLS"` (reward models) also trains the new scalar head in full.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant: works with frozen inputs and
    PEFT adapters).

    transformers also hooks the input embedding so that its output requires grad, which
    only reentrant checkpointing needs; the hook is removed, because a hooked embedding
    cannot take alignkit's fused gradient path (`alignkit.ops.grad_accumulation`).
    """
    lm = unwrap(model)
    settings = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)
    if hasattr(lm, "disable_input_require_grads"):
        lm.disable_input_require_grads()
