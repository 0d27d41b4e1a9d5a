"""GGUF -> Hugging Face folder conversion, written atomically and cached."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from alignkit import __version__
from alignkit.fsutil import alignkit_home, atomic_directory

log = logging.getLogger(__name__)

PROVENANCE_FILE = "alignkit_source.json"


def load_gguf_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def load_gguf_model(gguf_path: Path):
    """Dequantize a GGUF file into a float32 transformers model that can be saved."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are now plain float32 tensors; forget the GGUF quantizer so that
    # save_pretrained writes an ordinary safetensors checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def convert_gguf(
    gguf_path: str | Path, dst: str | Path, *, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write `gguf_path` as a Hugging Face folder at `dst` (safetensors + tokenizer).

    Atomic: the folder is assembled under a temporary name and renamed when complete,
    so an interrupted conversion never leaves a folder that later loads half-written.
    """
    gguf_path, dst = Path(gguf_path), Path(dst)
    log.info("converting %s -> %s (once; later loads use the folder)", gguf_path.name, dst)
    tokenizer = tokenizer if tokenizer is not None else load_gguf_tokenizer(gguf_path)
    model = load_gguf_model(gguf_path)
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": str(gguf_path),
            "sha256": file_sha256(gguf_path),
            "alignkit": __version__,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    return dst


def save_tokenizer_atomically(tokenizer, dst: Path) -> Path:
    with atomic_directory(dst) as tmp:
        tokenizer.save_pretrained(tmp)
    return dst


def cached_gguf_dir(gguf_path: Path) -> Path:
    """Cache folder for an arbitrary GGUF file, keyed by its path, size and mtime."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return alignkit_home() / "models" / "gguf" / f"{gguf_path.stem}-{digest}"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_complete_model_dir(path: Path) -> bool:
    """A folder that transformers can load (atomic writes make existence sufficient)."""
    has_weights = any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
    return (path / "config.json").is_file() and has_weights
