"""Score a trained translator on the held-out test books with sacrebleu BLEU and chrF.

    python examples/translator/evaluate.py runs/translator

Translations come from the plain PyTorch greedy decoder (export/reference.py), the same
reference the exported engine is tested against, so these figures are what the ONNX engine
should reproduce; with `--artifact DIR` they come from the exported artifact through the
torch-free engine instead, greedy or with `--num-beams N`. Test pairs are read from
CHECKPOINT_DIR/data/test.tsv (written by training), or from `--pairs` (a source<TAB>reference
file such as test_sentences.tsv), or else rebuilt from bible.db with the same book split.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import torch
from tokenizers import Tokenizer

from seqport.export.models.transformer import Transformer
from seqport.export.reference import greedy_generate

from corpus import load_pairs, read_split, split_pairs

TOKENIZER_FILE = "tokenizer.json"
RESULT_FILE = "eval_test.json"


def load_test_pairs(checkpoint: Path, pairs_file: Path | None) -> tuple[list[str], list[str]]:
    """Sources and references of the test split (see the module docstring for the order)."""
    if pairs_file is not None:
        rows = [line.split("\t") for line in pairs_file.read_text(encoding="utf-8").splitlines()]
        bad = [n for n, row in enumerate(rows, 1) if len(row) != 2]
        if bad:
            raise ValueError(f"{pairs_file}: lines {bad[:5]} are not source<TAB>reference")
        return [s for s, _ in rows], [r for _, r in rows]
    split = checkpoint / "data" / "test.tsv"
    pairs = read_split(split) if split.is_file() else split_pairs(load_pairs())["test"]
    return [p.source for p in pairs], [p.target for p in pairs]


def translate(model: Transformer, tokenizer: Tokenizer, sources: Sequence[str], batch_size: int) -> list[str]:
    """Greedy translations, batched by similar source length, returned in input order.

    Sources longer than the model's positions are truncated (keeping the final </s>).
    """
    limit = model.config.max_positions - 1
    encoded = [e.ids for e in tokenizer.encode_batch(list(sources))]  # each ends with </s>
    encoded = [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(len(encoded[i]) for i in rows)
        input_ids = torch.zeros(len(rows), longest, dtype=torch.long)  # (B, S), right-padded
        for r, i in enumerate(rows):
            input_ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
        budget = min(limit, 2 * longest + 10)  # French runs ~1.1x the English token count
        generated = greedy_generate(model, input_ids, (input_ids != 0).long(), budget)
        for i, ids in zip(rows, generated, strict=True):
            outputs[i] = tokenizer.decode([t for t in ids if t != model.config.eos_id])
    return outputs


def translate_with_engine(artifact: Path, sources: Sequence[str], num_beams: int, batch_size: int) -> list[str]:
    """Translations by the torch-free engine (greedy, or beam search with `num_beams`)."""
    import seqport.engine as sp

    model = sp.load(artifact)
    results = model.generate(
        list(sources),
        num_beams=num_beams,
        max_new_tokens=model.manifest.max_positions - 1,
        batch_size=batch_size,
        truncate=True,
    )
    return [r.text for r in results]


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU and chrF with their sacrebleu signatures (so figures are comparable)."""
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python examples/translator/evaluate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="folder with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--pairs", type=Path, help="source<TAB>reference file instead of the test split")
    p.add_argument("--output", type=Path, help=f"JSON result (default CHECKPOINT/{RESULT_FILE})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="score only the first N pairs (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--artifact", type=Path, help="translate with this exported artifact through the engine")
    p.add_argument("--num-beams", type=int, default=1, help="beam width with --artifact (1: greedy)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = Transformer.load(args.checkpoint)
    tokenizer = Tokenizer.from_file(str(args.checkpoint / TOKENIZER_FILE))
    sources, references = load_test_pairs(args.checkpoint, args.pairs)
    if args.limit:
        sources, references = sources[: args.limit], references[: args.limit]
    start = time.perf_counter()
    if args.artifact:
        hypotheses = translate_with_engine(args.artifact, sources, args.num_beams, args.batch_size)
        decoder = f"seqport engine ({args.artifact}), " + (
            f"beam search, {args.num_beams} beams" if args.num_beams > 1 else "greedy"
        )
    else:
        hypotheses = translate(model, tokenizer, sources, args.batch_size)
        decoder = "greedy (seqport.export.reference.greedy_generate), fp32"
    result = {
        "checkpoint": str(args.checkpoint),
        "pairs": str(args.pairs or "test split"),
        "sentences": len(sources),
        "decoder": decoder,
        **score(hypotheses, references),
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [
            {"source": s, "reference": r, "hypothesis": h}
            for s, r, h in list(zip(sources, references, hypotheses, strict=True))[:5]
        ],
    }
    output = args.output or args.checkpoint / RESULT_FILE
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({len(sources)} sentences, "
        f"{result['seconds']} s) -> {output}"
    )


if __name__ == "__main__":
    main()
