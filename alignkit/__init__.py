"""alignkit: align language models with human or AI preferences.

Importing the package is cheap (no torch); submodules import heavy libraries lazily.
"""

__version__ = "0.1.0"
