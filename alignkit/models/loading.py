"""The one model loader. Accepts, in this order:

1. a built-in name (`alignkit models list`), converted once from its GGUF and cached;
2. a local Hugging Face folder (a full model, or a PEFT adapter folder whose base model
   is itself resolvable);
3. a local `.gguf` file, converted once and cached under `$ALIGNKIT_HOME/models/gguf/`;
4. a hub id (`org/name`) already present in the local Hugging Face cache.

Nothing here touches the network: a hub id that is not cached is an error saying how to
provide the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignkit.errors import AlignkitError, ModelNotFoundError
from alignkit.models.builtin import (
    BUILTIN_MODELS,
    builtin_gguf_path,
    builtin_model_dir,
    builtin_tokenizer_dir,
)
from alignkit.models.convert import (
    cached_gguf_dir,
    convert_gguf,
    is_complete_model_dir,
    load_gguf_tokenizer,
    save_tokenizer_atomically,
)
from alignkit.models.device import select_device, select_dtype

log = logging.getLogger(__name__)


def resolve_model_path(spec: str | Path) -> Path:
    """Return a local folder transformers can load for `spec` (see module docstring)."""
    name = str(spec)
    if name in BUILTIN_MODELS:
        return _ensure_builtin(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if is_complete_model_dir(path) or (path / "adapter_config.json").is_file():
            return path
        raise ModelNotFoundError(
            f"{path}: a folder, but not a model (no config.json with safetensors weights, and no adapter_config.json)"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path}: a file, but not a .gguf model; pass a GGUF file or a model folder"
            )
        target = cached_gguf_dir(path.resolve())
        if not is_complete_model_dir(target):
            convert_gguf(path, target)
        return target
    if _looks_like_hub_id(name):
        cached = _hub_cache_snapshot(name)
        if cached is not None:
            return cached
    raise ModelNotFoundError(
        f"model '{name}' not found. alignkit never downloads weights at run time; give one of: "
        f"a built-in name ({', '.join(BUILTIN_MODELS)}), a local Hugging Face folder, a .gguf file, "
        f"or a hub id already in the local Hugging Face cache (e.g. fetched earlier with "
        f"`huggingface-cli download {name if _looks_like_hub_id(name) else 'org/name'}`)."
    )


def _ensure_builtin(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    target = builtin_model_dir(spec)
    if not is_complete_model_dir(target):
        convert_gguf(builtin_gguf_path(spec), target, tokenizer=load_builtin_tokenizer(name))
    return target


def load_builtin_tokenizer(name: str):
    """The tokenizer of a built-in model, cached on its own (fast path for tiny models)."""
    spec = BUILTIN_MODELS[name]
    from transformers import AutoTokenizer

    for folder in (builtin_model_dir(spec), builtin_tokenizer_dir(spec)):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    tokenizer = load_gguf_tokenizer(builtin_gguf_path(spec))
    save_tokenizer_atomically(tokenizer, builtin_tokenizer_dir(spec))
    return tokenizer


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an invalid id
        return None
    return folder if is_complete_model_dir(folder) else None


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False):
    """Tokenizer for any model spec; a pad token is set (to EOS) only if it has none.

    alignkit never derives masks from the pad id, so pad == EOS is safe here.
    """
    from transformers import AutoTokenizer

    name = str(spec)
    if name in BUILTIN_MODELS:
        tokenizer = load_builtin_tokenizer(name)
    else:
        path = resolve_model_path(spec)
        source = (
            _adapter_base(path)
            if (path / "adapter_config.json").is_file()
            and not (path / "tokenizer_config.json").is_file()
            else path
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(adapter_dir: Path) -> Path:
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base:
        raise ModelNotFoundError(
            f"{adapter_dir}: adapter_config.json names no base_model_name_or_path"
        )
    return resolve_model_path(base)


def load_model(
    spec: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    model_class=None,
    **from_pretrained_kwargs,
):
    """Load a causal LM (or `model_class`) for `spec` onto `device` in `dtype`.

    A PEFT adapter folder loads its base model and applies the adapter. transformers
    prefers safetensors and reads any `.bin` with `weights_only=True`; remote code runs
    only with `trust_remote_code=True`. Extra keyword arguments (e.g. `num_labels`) go to
    `from_pretrained`.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    if model_class is None:
        refuse_reward_model(spec, path)
    model_class = model_class or AutoModelForCausalLM
    target_device = select_device(device)
    torch_dtype = select_dtype(dtype, target_device)
    adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    base_path = _adapter_base(path) if adapter else path
    model = model_class.from_pretrained(
        base_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
    )
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
    return model.to(target_device)


def is_reward_model_folder(path: Path) -> bool:
    """True if `path` holds a `*ForSequenceClassification` model (ours or anyone's)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def refuse_reward_model(spec, path: Path) -> None:
    """A reward model (full folder or PEFT adapter) given where a causal LM is needed is
    an error: loading it as one would silently generate with the bare backbone."""
    adapter_config = path / "adapter_config.json"
    adapter_task = (
        json.loads(adapter_config.read_text()).get("task_type")
        if adapter_config.is_file()
        else None
    )
    if is_reward_model_folder(path) or adapter_task == "SEQ_CLS":
        raise AlignkitError(
            f"{spec} is a reward model: it scores text and cannot generate. Give a policy "
            "(a causal LM such as runs/dpo/final or smollm2-135m-instruct); to use this one, "
            f"score with `alignkit score --model {spec}` or pass reward={spec} to ppo/rloo/grpo"
        )


def load_model_and_tokenizer(spec: str | Path, **kwargs):
    """`(model, tokenizer)` for `spec`; keyword arguments go to `load_model`."""
    return load_model(spec, **kwargs), load_tokenizer(
        spec, trust_remote_code=kwargs.get("trust_remote_code", False)
    )
