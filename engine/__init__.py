"""Torch-free inference engine for seqport artifacts.

    import seqport.engine as sp
    model = sp.load("artifacts/translator")
    print(model.generate("In the beginning God created the heavens and the earth.")[0].text)
"""

import warnings
from typing import Any

from seqport.engine.api import load
from seqport.engine.causal_lm import CausalLMModel
from seqport.engine.config import GenerationConfig
from seqport.engine.encoder_only import Classification, EncoderModel
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
from seqport.engine.results import GeneratedSequence, GenerationResult
from seqport.engine.runtime import RuntimeOptions
from seqport.engine.scoring import ScoreResult
from seqport.engine.seq2seq import Seq2SeqModel
from seqport.engine.streaming import StepResult

__all__ = [
    "ArtifactError",
    "CausalLMModel",
    "Classification",
    "ConfigError",
    "EncoderModel",
    "GeneratedSequence",
    "GenerationConfig",
    "GenerationResult",
    "InputError",
    "IntegrityError",
    "ManifestError",
    "ParityError",
    "ProviderError",
    "RuntimeFailure",
    "RuntimeOptions",
    "ScoreResult",
    "Seq2SeqModel",
    "StepResult",
    "SeqportError",
    "load",
]


def __getattr__(name: str) -> Any:
    """`seqport.engine.Sequence`: the old name of GeneratedSequence, kept for user code."""
    if name == "Sequence":
        warnings.warn(
            "seqport.engine.Sequence is deprecated (it read like collections.abc.Sequence); "
            "use seqport.engine.GeneratedSequence",
            DeprecationWarning,
            stacklevel=2,
        )
        return GeneratedSequence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
