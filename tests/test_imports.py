"""Every module imports, and the top-level package stays cheap to import (no torch)."""

import importlib
import pkgutil
import subprocess
import sys

import alignkit


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(alignkit.__path__, "alignkit.")]
    assert "alignkit.data.templating" in names
    for name in names:
        if name != "alignkit.__main__":
            importlib.import_module(name)


def test_cli_help_does_not_import_torch():
    code = "import sys; from alignkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        == "False"
    )
