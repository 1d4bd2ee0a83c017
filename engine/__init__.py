"""Torch-free inference engine for seqport artifacts.

    import seqport.engine as sp
    model = sp.load("artifacts/translator")
    print(model.generate("In the beginning God created the heavens and the earth.")[0].text)
"""

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
from seqport.engine.results import GenerationResult, Sequence
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
    "Sequence",
    "StepResult",
    "SeqportError",
    "load",
]
