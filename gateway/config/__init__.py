"""The configuration document: its model (frozen msgspec Structs), loader and semantic validation.

``load_document(path)`` / ``parse_document(data, fmt)`` return a validated :class:`Document` or raise
:class:`ConfigError`, whose ``errors`` are ``"path: message"`` lines.  See ``spec/config-model.md``.
"""
from .loader import ConfigError, load_document, parse_document
from .model import *  # noqa: F403 - the model's __all__ is the public set of Structs
from .model import __all__ as _model_all
from .validate import validate, warnings

__all__ = ["ConfigError", "load_document", "parse_document", "validate", "warnings", *_model_all]
