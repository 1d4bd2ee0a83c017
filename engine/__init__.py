"""Torch-free inference engine for seqport artifacts.

import seqport.engine as sp
model = sp.load("artifacts/translator")
print(model.generate("In the beginning God created the heavens and the earth.")[0].text)
"""

from seqport.engine.api import load
from seqport.engine.config import GenerationConfig
from seqport.engine.errors import (
    ArtifactError,
    ConfigError,
    InputError,
    IntegrityError,
    ManifestError,
    ParityError,
    ProviderError,
    RuntimeFailure,
    SeqportError,
)
from seqport.engine.results import GenerationResult, Sequence
from seqport.engine.runtime import RuntimeOptions

__all__ = [
    "ArtifactError",
    "ConfigError",
    "GenerationConfig",
    "GenerationResult",
    "InputError",
    "IntegrityError",
    "ManifestError",
    "ParityError",
    "ProviderError",
    "RuntimeFailure",
    "RuntimeOptions",
    "SeqportError",
    "Sequence",
    "load",
]
