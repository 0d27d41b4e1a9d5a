"""Typed run configs: dataclasses documented once per field; YAML is their serialized form.

    config = load_config(SFTConfig, "run.yaml", ["learning_rate=1e-4", "lora.r=8"])

Precedence: field defaults < the YAML file < `key=value` overrides (dotted keys reach
nested settings such as `lora.r`). Unknown keys are rejected with the closest valid key
suggested; values are checked against each field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError
from alignkit.losses.registry import PREFERENCE_LOSSES
from alignkit.models.builtin import DEFAULT_MODEL
from alignkit.models.lora import LoraSettings


class ConfigError(AlignkitError):
    pass


def setting(default: Any, help: str, choices: tuple | None = None, **kwargs):
    """A config field with its documentation (shown by `alignkit <command> --help`)."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


class Settings:
    """Base of every config part: validation runs once the dataclass is built. Each part
    checks its own keys in `validate` and calls `super().validate()`."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        pass

    def positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")


@dataclass
class RunSettings(Settings):
    """The run: which model, where it is written, how it is checkpointed and logged."""

    model: str = setting(
        DEFAULT_MODEL,
        "policy/backbone: built-in name, Hugging Face folder, .gguf file or cached hub id",
    )
    output_dir: str = setting(
        "runs/run", "the run folder (config.yaml, metrics.jsonl, checkpoints/, final/)"
    )
    seed: int = setting(0, "one seed drives data order, sampling and initialisation")
    device: str = setting("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ...")
    precision: str = setting(
        "auto",
        "auto: bf16 autocast on GPUs that support it, fp32 on CPU",
        choices=("auto", "fp32", "bf16"),
    )
    resume: str | None = setting(
        None, "auto: continue from the newest checkpoint in output_dir; or a checkpoint path"
    )
    overwrite: bool = setting(
        False, "start afresh in an output_dir that holds another run, removing that run first"
    )
    lora: LoraSettings | None = setting(
        None, "null for full fine-tuning, or {r, alpha, dropout, target_modules}"
    )
    merge_lora: bool = setting(
        False, "with LoRA, also write final/merged/: the base model with the adapter merged in"
    )
    trainable_layers: int | None = setting(
        None,
        "train only the top N transformer blocks (and the heads above them); the embeddings "
        "and lower blocks stay frozen, so backward stops early: about half the compute per "
        "token at N = 8 of 30; null: every layer",
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in backward to save memory"
    )
    lean_memory: bool = setting(
        True,
        "memory measures (results unchanged): gradients and AdamW state in flat buffers "
        "allocated before the first activation, the largest forward pass first, and on CPU "
        "free heap pages handed back before each pass; false: PyTorch's lazy allocation",
    )
    save_every: int | None = setting(
        500, "write checkpoints/step-N every this many steps; null: only final/"
    )
    keep_last: int = setting(2, "keep only the newest this many checkpoints")
    log_every: int = setting(10, "log metrics every this many steps")
    loggers: list[str] = setting(
        [], "extra metric sinks: tensorboard, wandb, mlflow (when installed)"
    )

    def validate(self) -> None:
        super().validate()
        self.positive("save_every", "log_every", "keep_last", "trainable_layers")
        if self.trainable_layers is not None and self.lora is not None:
            raise ConfigError(
                "set lora or trainable_layers, not both (LoRA already freezes the base "
                "model; lora.target_modules chooses what it adapts)"
            )
        unknown = set(self.loggers) - {"tensorboard", "wandb", "mlflow"}
        if unknown:
            raise ConfigError(
                f"unknown logger(s) {sorted(unknown)}; expected tensorboard, wandb or mlflow"
            )


@dataclass
class OptimSettings(Settings):
    """Optimisation: how long, how large a step, AdamW and the schedule."""

    max_steps: int | None = setting(None, "optimizer steps to train; default: derived from epochs")
    epochs: float = setting(1.0, "passes over the data when max_steps is not set")
    batch_size: int = setting(8, "examples per optimizer step (across all processes)")
    micro_batch_size: int | None = setting(
        None, "examples per forward pass and process; default batch_size"
    )
    learning_rate: float = setting(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = setting(
        0.0, "AdamW decoupled weight decay (not applied to biases and norms)"
    )
    adam_betas: list[float] = setting([0.9, 0.999], "AdamW betas")
    warmup_steps: int = setting(0, "linear warm-up steps from 0 to learning_rate")
    lr_schedule: str = setting(
        "cosine", "decay after warm-up", choices=("cosine", "linear", "constant")
    )
    max_grad_norm: float | None = setting(
        1.0, "clip the global gradient norm to this; null disables clipping"
    )

    def validate(self) -> None:
        super().validate()
        self.positive("batch_size", "micro_batch_size", "max_steps", "learning_rate", "epochs")
        if self.batch_size % self.micro_batch:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch})"
            )

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size


@dataclass
class DataSettings(Settings):
    """Training and held-out records, and prompt truncation."""

    data: str | None = setting(
        None, "training file or folder (JSONL, JSON, CSV, Parquet, datasets folder)"
    )
    eval_data: str | None = setting(
        None, "held-out file evaluated every eval_every steps and at the end"
    )
    eval_every: int | None = setting(
        None, "evaluate eval_data every this many steps (and always at the end)"
    )
    skip_invalid: bool = setting(
        False, "set invalid records aside in output_dir/rejects.jsonl instead of failing"
    )
    max_prompt_length: int | None = setting(
        None, "truncate prompts (from the left) to this many tokens"
    )

    def validate(self) -> None:
        super().validate()
        self.positive("eval_every", "max_prompt_length")


@dataclass
class TextSettings(Settings):
    """Offline methods train on whole sequences: their length cap."""

    max_length: int = setting(1024, "truncate sequences to this many tokens")

    def validate(self) -> None:
        super().validate()
        self.positive("max_length")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length "
                f"({self.max_length})"
            )


@dataclass
class TrainConfig(TextSettings, DataSettings, OptimSettings, RunSettings):
    """Keys every offline training command shares (DESIGN "Common config keys")."""


@dataclass
class TokenCapSettings(Settings):
    """For methods whose loss is a sum over examples (SFT, DPO family, reward models);
    KTO and RL couple the examples of a forward pass."""

    micro_batch_tokens: int | str | None = setting(
        "auto",
        "also cap each forward pass at this many tokens (whole examples; bounds activation "
        "memory with long-tailed lengths; the gradient is unchanged); auto: sized from the "
        "model so activations stay near half the weights + gradients + AdamW state; null: no cap",
    )

    def validate(self) -> None:
        super().validate()
        if isinstance(self.micro_batch_tokens, str):
            if self.micro_batch_tokens != "auto":
                raise ConfigError(
                    "micro_batch_tokens must be a number of tokens, auto or null, "
                    f"got {self.micro_batch_tokens!r}"
                )
        else:
            self.positive("micro_batch_tokens")


def defaults(**values):
    """Class decorator for a config whose inherited keys get other defaults (their help
    and choices unchanged), so a command names only what differs, e.g.
    `@defaults(output_dir="runs/dpo", learning_rate=1e-6)`."""

    def wrap(cls):
        inherited = {
            f.name: f
            for base in reversed(cls.__mro__[1:])
            if dataclasses.is_dataclass(base)
            for f in dataclasses.fields(base)
        }
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for name, value in values.items():
            parent = inherited[name]
            annotations[name] = parent.type
            setattr(cls, name, setting(value, parent.metadata["help"], parent.metadata["choices"]))
        cls.__annotations__ = annotations
        return dataclass(cls)

    return wrap


@defaults(output_dir="runs/sft", learning_rate=2e-5)
class SFTConfig(TokenCapSettings, TrainConfig):
    packing: bool = setting(False, "padding-free packing: concatenate the micro-batch into one row")


@defaults(output_dir="runs/dpo", learning_rate=1e-6)
class DPOConfig(TokenCapSettings, TrainConfig):
    loss: str = setting(
        "dpo",
        "preference loss (alignkit.losses.registry lists each one's reduction and inputs)",
        choices=tuple(PREFERENCE_LOSSES),
    )
    beta: float = setting(
        0.1,
        "temperature: strength of the anchor to the reference (SimPO: reward scale; ORPO: lambda)",
    )
    label_smoothing: float = setting(
        0.0,
        "cdpo/robust: probability that a label is wrong (records' p_chosen overrides, dpo/cdpo)",
    )
    simpo_gamma: float = setting(0.5, "SimPO target reward margin")
    ref_model: str | None = setting(
        None, "reference model; default: the starting model (with LoRA: the adapter disabled)"
    )
    packing: bool = setting(
        True, "pack each micro-batch's chosen and rejected sequences into one padding-free row"
    )
    share_prompt: bool = setting(
        True,
        "with packing, run each pair's prompt once (the rejected response attends to it): "
        "the same log-probs for fewer tokens",
    )

    def validate(self) -> None:
        super().validate()
        # from_dict checks the choices; a DPOConfig built in Python reaches here unchecked
        if self.loss not in PREFERENCE_LOSSES:
            raise ConfigError(
                f"loss must be one of {', '.join(PREFERENCE_LOSSES)}, got {self.loss!r}"
            )
        error = PREFERENCE_LOSSES[self.loss].error(self)
        if error is not None:
            raise ConfigError(f"loss={self.loss} {error}")


@defaults(output_dir="runs/kto", learning_rate=1e-6)
class KTOConfig(TrainConfig):
    beta: float = setting(0.1, "temperature of the implicit reward beta * (policy - ref)")
    desirable_weight: float = setting(1.0, "lambda_D: weight of desirable examples")
    undesirable_weight: float = setting(1.0, "lambda_U: weight of undesirable examples")
    ref_model: str | None = setting(
        None, "reference model; default: the starting model (with LoRA: the adapter disabled)"
    )
    packing: bool = setting(True, "pack each micro-batch into one padding-free row")


@defaults(output_dir="runs/rm", learning_rate=1e-5)
class RewardConfig(TokenCapSettings, TrainConfig):
    num_heads: int = setting(
        1, "scalar heads over the shared backbone; > 1 is an ensemble with mean and std"
    )
    bootstrap: bool = setting(
        True, "ensembles: each head weights each record by its own Poisson(1) draw"
    )
    center_coef: float = setting(
        0.0, "reward centering: add center_coef * (r_chosen + r_rejected)^2 to the loss"
    )
    norm_data: str | None = setting(
        None,
        "responses whose mean reward is shifted to 0 after training; default eval_data, else data",
    )
    norm_samples: int = setting(1000, "use at most this many records of norm_data")
    packing: bool = setting(True, "pack each micro-batch into one padding-free row")
    pooling: str = setting(
        "last",
        "what the head reads: last (the last token's state; transformers reads it the same "
        "way) or mean (the mean of the response tokens' states; alignkit's scorers only)",
        choices=("last", "mean"),
    )

    def validate(self) -> None:
        super().validate()
        if self.num_heads < 1:
            raise ConfigError(f"num_heads must be at least 1, got {self.num_heads}")
        if self.center_coef < 0:
            raise ConfigError(f"center_coef must be >= 0, got {self.center_coef}")
        if self.norm_samples < 1:
            raise ConfigError(f"norm_samples must be at least 1, got {self.norm_samples}")


@dataclass
class SamplingPart(Settings):
    """How completions are sampled (the fields of `rollout.SamplingSettings`)."""

    max_new_tokens: int = setting(48, "completion length cap when sampling")
    temperature: float = setting(1.0, "sampling temperature (log-probs use the same one)")
    top_p: float = setting(1.0, "nucleus sampling (1.0 = off)")
    top_k: int = setting(0, "top-k sampling (0 = off)")
    stop: list[str] = setting([], "stop strings that end a completion")

    def validate(self) -> None:
        super().validate()
        self.positive("max_new_tokens")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")


@defaults(
    batch_size=16,
    learning_rate=1e-6,
    lr_schedule="constant",
    save_every=50,
    log_every=1,
)
class RLConfig(SamplingPart, DataSettings, OptimSettings, RunSettings):
    """Keys shared by the on-policy RL commands (ppo, rloo, grpo). No `max_length`:
    prompts are cut by `max_prompt_length`, completions by `max_new_tokens`."""

    data: str | None = setting(
        None, "prompts file (records with a 'prompt'); or leave unset and name a task"
    )
    eval_data: str | None = setting(
        None,
        "held-out prompts: eval/objective/scores and eval/objective/kl from one sample each, "
        "every eval_every steps and at the end (with task= and eval_every: the task's held-out "
        "prompts)",
    )
    task: str | None = setting(
        None, "built-in task (sentiment): its training prompts, and its oracle as default reward"
    )
    reward: str | None = setting(
        None, "reward source: reward-model folder, module:function, file.py:function or task:NAME"
    )
    reward_risk_aversion: float = setting(
        0.0,
        "k >= 0: score mean - k * std over an ensemble reward model's heads (Inverse Reward "
        "Design's risk-averse reward); needs reward= a folder trained with num_heads > 1",
    )
    ref_model: str | None = setting(
        None, "reference for the KL term; default the starting model (LoRA: adapter disabled)"
    )
    kl_coef: float = setting(0.05, "beta of the KL penalty folded into the reward")
    kl_estimator: str = setting("k1", "per-token KL estimator", choices=("k1", "k2", "k3"))
    kl_target: float | None = setting(
        None, "adaptive KL control: target KL per completion (null: fixed kl_coef)"
    )
    kl_horizon: int = setting(10000, "adaptive KL control horizon, in completions")
    ppo_epochs: int = setting(4, "passes over each rollout batch")
    num_minibatches: int = setting(1, "optimizer steps per pass over a rollout batch")
    cliprange: float = setting(0.2, "policy ratio clip range")
    missing_eos_penalty: float | None = setting(
        None, "subtract this from the score of completions cut at max_new_tokens"
    )
    sample_every: int = setting(10, "write example completions to samples.jsonl every N steps")

    def validate(self) -> None:
        super().validate()
        if self.reward_risk_aversion < 0:
            raise ConfigError(f"reward_risk_aversion must be >= 0, got {self.reward_risk_aversion}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of num_minibatches "
                f"({self.num_minibatches})"
            )


@defaults(output_dir="runs/ppo")
class PPOConfig(RLConfig):
    critic: str = setting(
        "auto",
        "value model: 'reward' (initialised from the reward model), 'policy' (from the "
        "policy, fresh head); auto = reward when the reward is a model folder",
        choices=("auto", "reward", "policy"),
    )
    critic_learning_rate: float = setting(1e-5, "learning rate of the value model")
    gamma: float = setting(1.0, "discount")
    lam: float = setting(0.95, "GAE lambda")
    cliprange_value: float = setting(0.2, "value clip range around the rollout's values")
    vf_coef: float = setting(0.1, "weight of the value loss")
    whiten_advantages: bool = setting(True, "normalise advantages over each rollout batch")
    ptx_data: str | None = setting(None, "sft data for the PPO-ptx term (InstructGPT)")
    ptx_coef: float = setting(0.0, "weight of the pretraining/SFT log-likelihood term")


@defaults(output_dir="runs/rloo", ppo_epochs=1)
class RLOOConfig(RLConfig):
    num_generations: int = setting(4, "completions per prompt (the leave-one-out group)")


@defaults(output_dir="runs/grpo", ppo_epochs=1, kl_coef=0.0)
class GRPOConfig(RLConfig):
    num_generations: int = setting(4, "completions per prompt (the normalisation group)")
    beta: float = setting(0.04, "weight of the per-token k3 KL term in the loss")


# The pair-selection rules of `alignkit online-dpo` (alignkit.feedback.selection.SELECTIONS;
# named here so that the CLI starts without importing torch; a test keeps the two equal).
SELECTION_RULES = ("passive", "random", "best_worst", "sea_ee", "sea_bai", "uncertainty")


@dataclass
class EnsembleSettings(Settings):
    """The epistemic reward model of SEA (alignkit.feedback.epistemic): MLP heads on the
    starting model's last hidden states of each response, trained on the queried labels."""

    members: int = setting(10, "ensemble members (posterior samples)")
    hidden: int = setting(128, "hidden units of each member's MLP")
    anchor_weight: float = setting(
        1.0, "pull of each member toward its own random initialisation (the prior)"
    )
    learning_rate: float = setting(1e-3, "Adam learning rate of the members")
    steps: int = setting(20, "gradient steps on the labels so far after each round's new labels")
    pooling: str = setting(
        "mean",
        "the feature of a response: mean (of the start model's last hidden states over the "
        "response's tokens) or last (the state at its last token, as in SEA)",
        choices=("mean", "last"),  # alignkit.feedback.epistemic.POOLINGS
    )

    def validate(self) -> None:
        super().validate()
        self.positive("members", "hidden", "learning_rate", "steps")
        if self.members < 2:
            raise ConfigError(f"ensemble.members must be at least 2, got {self.members}")
        if self.anchor_weight < 0:
            raise ConfigError(f"ensemble.anchor_weight must be >= 0, got {self.anchor_weight}")


@defaults(
    output_dir="runs/online-dpo",
    batch_size=8,
    learning_rate=5e-6,
    lr_schedule="constant",
    save_every=10,
    log_every=1,
)
class OnlineDPOConfig(SamplingPart, DataSettings, OptimSettings, RunSettings):
    """`alignkit online-dpo`: each round samples `samples_per_prompt` responses to
    `batch_size` prompts, picks one pair per prompt (`selection`), has the labeller
    label it within `query_budget`, and takes `updates_per_round` preference-loss steps.
    A round is one step (`max_steps` rounds, else `epochs` passes over the prompts)."""

    data: str | None = setting(
        None, "prompts file (records with a 'prompt'); or leave unset and name a task"
    )
    eval_data: str | None = setting(
        None,
        "held-out prompts: eval/objective/scores (under `oracle`) and eval/objective/kl (to "
        "the starting model) every eval_every rounds and at the end (with task= and "
        "eval_every: the task's held-out prompts)",
    )
    task: str | None = setting(
        None,
        "built-in task (sentiment, sentiment-chat): its prompts, its oracle as the default "
        "labeller and as the held-out scorer",
    )
    reward: str | None = setting(
        None,
        "score labeller, called once per response it scores: reward-model folder, "
        "module:function, file.py:function or task:NAME (default: the task's oracle)",
    )
    judge: str | None = setting(
        None,
        "pairwise labeller instead of reward=, called once per pair: llm:MODEL, "
        "openai:BASE_URL (with judge_model) or any load_judge spec; its probabilities are "
        "soft labels",
    )
    judge_model: str | None = setting(None, "the server's model name for judge=openai:BASE_URL")
    oracle: str | None = setting(
        None,
        "held-out scorer for eval/objective/scores (a load_judge spec); default the task's "
        "oracle; never counted as queries",
    )
    samples_per_prompt: int = setting(4, "K: responses sampled per prompt each round")
    selection: str = setting(
        "passive",
        "which pair of the K responses is labelled: passive (the first two), random, "
        "best_worst (labeller scores all K), sea_ee, sea_bai (Thompson sampling on the "
        "epistemic reward model), uncertainty",
        choices=SELECTION_RULES,
    )
    query_budget: int | None = setting(
        None,
        "labeller calls the run may make in all (a score labeller: one per response scored; "
        "a judge: one per pair); the run stops cleanly when it is spent; null: no limit",
    )
    loss: str = setting(
        "dpo",
        "preference loss (alignkit.losses.registry): dpo, ipo, simpo, ...",
        choices=tuple(PREFERENCE_LOSSES),
    )
    beta: float = setting(0.1, "temperature of the loss (SimPO: reward scale)")
    label_smoothing: float = setting(
        0.0,
        "cdpo/robust: probability that a label is wrong (a judge's soft labels override it "
        "for dpo/cdpo)",
    )
    simpo_gamma: float = setting(0.5, "SimPO target reward margin")
    ref_model: str | None = setting(
        None, "reference model; default the starting model (LoRA: the adapter disabled)"
    )
    ref_update_every: int | None = setting(
        None,
        "iterative DPO: the reference becomes the current policy every this many rounds; "
        "null: fixed reference",
    )
    updates_per_round: int = setting(
        1, "optimizer steps on each round's labelled pairs (each over all of them)"
    )
    kl_coef: float = setting(
        0.0,
        "KL control: adds kl_coef * (1/2) (log pi(y|x) - log pi_ref(y|x))^2 for both "
        "responses of each pair (summed log-probs); 0: the preference loss alone",
    )
    ensemble: EnsembleSettings = field(
        default_factory=EnsembleSettings,
        metadata={
            "help": "the epistemic reward model used by sea_ee, sea_bai, uncertainty and "
            "mixed preference learning: {members, hidden, anchor_weight, learning_rate, steps, "
            "pooling (mean or last: how a response's hidden states become its feature)}",
            "choices": None,
        },
    )
    mixed_fraction: float = setting(
        0.0,
        "mixed preference learning: after mixed_burn_in rounds, up to this fraction of each "
        "round's pairs (those the ensemble is surest about) labelled by the ensemble, "
        "without a query",
    )
    mixed_burn_in: int = setting(
        0, "rounds labelled by the labeller alone before mixed preference learning starts"
    )
    sample_every: int = setting(10, "write example responses to samples.jsonl every N rounds")

    def validate(self) -> None:
        super().validate()
        self.positive("query_budget", "ref_update_every", "updates_per_round", "sample_every")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.samples_per_prompt < 2:
            raise ConfigError(
                f"samples_per_prompt must be at least 2 to form a pair, got {self.samples_per_prompt}"
            )
        if self.reward is not None and self.judge is not None:
            raise ConfigError("give one labeller: reward= (scores) or judge= (pairs), not both")
        if not 0 <= self.mixed_fraction < 1:
            raise ConfigError(f"mixed_fraction must be in [0, 1), got {self.mixed_fraction}")
        if self.mixed_burn_in < 0:
            raise ConfigError(f"mixed_burn_in must be >= 0, got {self.mixed_burn_in}")
        if self.selection not in SELECTION_RULES:
            raise ConfigError(
                f"selection must be one of {', '.join(SELECTION_RULES)}, got {self.selection!r}"
            )
        if self.loss not in PREFERENCE_LOSSES:
            raise ConfigError(
                f"loss must be one of {', '.join(PREFERENCE_LOSSES)}, got {self.loss!r}"
            )
        error = PREFERENCE_LOSSES[self.loss].error(self)
        if error is not None:
            raise ConfigError(f"loss={self.loss} {error}")


# ---- building configs -----------------------------------------------------------------


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults < YAML file at `path` < `key=value` overrides; returns a validated `cls`."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}"
            )
        values = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(values, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return from_dict(cls, values)


def _set_dotted(values: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = values
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def from_dict(cls: type, values: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = (
                f"; did you mean '{prefix}{close[0]}'?"
                if close
                else f"; valid keys: {', '.join(fields)}"
            )
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        choices = fields[key].metadata.get("choices")
        if choices and kwargs[key] not in choices:
            raise ConfigError(
                f"{prefix}{key} must be one of {', '.join(choices)}, got {kwargs[key]!r}"
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        first_error = None
        for inner in (a for a in args if a is not type(None)):  # in declared order
            try:
                return _coerce(value, inner, key)
            except ConfigError as err:
                first_error = first_error or err
        raise first_error
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its settings or null, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(item, args[0], key) for item in items] if args else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def describe_keys(cls: type) -> str:
    """One line per key: name, default and help (for `--help`)."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        choices = f" ({'|'.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        lines.append(f"  {f.name}={default!r}{choices}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


# keys that name files or folders a run reads; checked before any model is loaded
INPUT_PATH_KEYS = ("data", "eval_data", "ptx_data", "norm_data")


def check_input_paths(config) -> None:
    """Every input file the config names exists, and so does a `reward` given as a folder
    or as a `file.py:function`: a missing one is an error naming the key, raised before
    minutes go into loading models."""
    missing = [
        (key, value)
        for key in INPUT_PATH_KEYS
        if isinstance(value := getattr(config, key, None), str) and not Path(value).exists()
    ]
    reward = getattr(config, "reward", None)
    if isinstance(reward, str) and not _reward_found(reward):
        missing.append(("reward", reward))
    if missing:
        raise ConfigError(
            "; ".join(f"{key}={value}: no such file or folder" for key, value in missing)
        )


def _reward_found(spec: str) -> bool:
    """task:NAME and importable module:function specs are checked when loaded; a
    file.py:function needs its file, anything else is a model (folder, built-in name or
    hub id in the local cache)."""
    if spec.startswith("task:"):
        return True
    if ":" in spec:
        file_part = spec.rsplit(":", 1)[0]
        return not file_part.endswith(".py") or Path(file_part).is_file()
    from alignkit.errors import ModelNotFoundError
    from alignkit.models.loading import resolve_model_path

    try:
        resolve_model_path(spec)
    except ModelNotFoundError:
        return False
    return True
