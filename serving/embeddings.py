"""POST /v1/embeddings on an encoder-only artifact: model.embed in a worker thread."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from seqport.serving.protocol import bad_request, prompt_inputs


async def embeddings_body(model: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's embeddings answer for `body` (input, encoding_format, dimensions).

    Raises:
        APIError: 400 for a bad input, encoding format or dimension count.
    """
    inputs = prompt_inputs(body.get("input"), "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != model.dimension:
        raise bad_request(
            f"this model's embeddings have {model.dimension} dimensions, got dimensions={dimensions!r}", "dimensions"
        )
    ids = model.input_ids(inputs)
    vectors = await run_in_threadpool(model.embed, ids)  # float32 (N, d)
    data = [{"object": "embedding", "index": i, "embedding": _encode(row, encoding)} for i, row in enumerate(vectors)]
    tokens = sum(map(len, ids))
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32 bytes, as OpenAI's clients decode them
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.astype(float).tolist()
