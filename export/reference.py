"""Plain PyTorch decoding loops: the reference the engine is tested against, and the
PyTorch-eager side of `seqport demo`."""

from __future__ import annotations

import torch

from seqport.export.models.transformer import Transformer


@torch.inference_mode()
def greedy_generate(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy decoding with the KV cache, one row at a time stopping at EOS.

    Args:
        input_ids, attention_mask: int64 (B, S), right-padded sources.
        max_new_tokens: most tokens generated per row (EOS included).

    Returns:
        Per row, the generated ids without the decoder start token, EOS included when reached.
    """
    cfg = model.config
    batch = input_ids.shape[0]
    _, cross = model.encode(input_ids, attention_mask)
    past = model.empty_past(batch)
    tokens = torch.full((batch, 1), cfg.bos_id, dtype=torch.long)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_new_tokens):
        hidden, past = model.decode_step(tokens, attention_mask, cross, past)
        next_ids = model.logits(hidden[:, -1:]).argmax(-1)  # (B, 1)
        for row in range(batch):
            if not done[row]:
                outputs[row].append(int(next_ids[row, 0]))
        done |= next_ids[:, 0] == cfg.eos_id
        if bool(done.all()):
            break
        tokens = next_ids
    return outputs
