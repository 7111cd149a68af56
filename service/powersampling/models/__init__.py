"""Models: the registry of known models, the store of prepared folders, fingerprints, the tiny test model.

The bottom layer under the engines: nothing here imports an engine.
"""

from powersampling.models.fingerprints import fingerprint_folder, fingerprint_state_dict
from powersampling.models.gguf import assemble_gguf, locate_parts
from powersampling.models.registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    GgufSource,
    KnownModel,
    ModelIntegrityError,
    ModelNotInstalled,
)
from powersampling.models.store import (
    PreparedModel,
    models_cache_dir,
    prepare_known_model,
    prepare_tiny_model,
    resolve_model,
)
from powersampling.models.tiny import TINY_MODEL_NAME

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "TINY_MODEL_NAME",
    "GgufSource",
    "KnownModel",
    "ModelIntegrityError",
    "ModelNotInstalled",
    "PreparedModel",
    "assemble_gguf",
    "fingerprint_folder",
    "fingerprint_state_dict",
    "locate_parts",
    "models_cache_dir",
    "prepare_known_model",
    "prepare_tiny_model",
    "resolve_model",
]
