"""Train the seed Transformer on English→French Bible verses, on a CPU, within a time budget.

    python examples/translator/train.py --out runs/translator --max-minutes 45

The recipe is the paper's (Vaswani et al., 2017, §5): shared BPE vocabulary, Adam(0.9, 0.98,
1e-9) with warm-up then inverse-square-root decay, label smoothing 0.1, batches of about
`--max-tokens` tokens of similar length. Everything random is seeded, so a run is reproducible
on the same machine and library versions, and `--resume` continues exactly where the last
checkpoint stopped (same batch order, same dropout stream).

The output folder is directly loadable: config.json + model.safetensors (Transformer.load) and
tokenizer.json, plus training state (checkpoint.pt), the split files (data/) and a JSON log.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from tqdm import tqdm

from seqport.export.models.transformer import Transformer, TransformerConfig

from corpus import read_split, write_splits

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: the engine relies on this order
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
VALID_MAX_LEN = 250  # validation keeps long verses too, within max_positions (256)

Example = tuple[list[int], list[int]]  # source ids + </s>; <s> + target ids + </s>


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train one BPE vocabulary shared by both languages (the paper shares it too).

    Metaspace keeps spaces inside tokens ("▁le"), so decode(encode(x)) == x for normalised
    text, accents included; the post-processor appends </s> to every encoded source.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=latin_alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3], ids
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return tokenizer


def latin_alphabet() -> list[str]:
    """Printable ASCII, Latin-1, Latin Extended-A and general punctuation, NFKC-stable.

    Seeding the BPE alphabet with them keeps characters the Bible texts lack (œ, Ç, «, €, —)
    out of <unk>, so user text in either language survives encode → decode.
    """
    ranges = [(0x20, 0x7E), (0xA1, 0x17F), (0x2010, 0x2027), (0x20AC, 0x20AC)]
    chars = (chr(c) for lo, hi in ranges for c in range(lo, hi + 1))
    return [c for c in chars if c != " " and unicodedata.normalize("NFKC", c) == c]


def encode_pairs(tokenizer: Tokenizer, pairs, max_len: int) -> list[Example]:
    """Token ids per pair, dropping pairs with more than `max_len` tokens on either side."""
    sources = tokenizer.encode_batch([p.source for p in pairs])  # ends with </s>
    targets = tokenizer.encode_batch([p.target for p in pairs], add_special_tokens=False)
    examples = []
    for src, tgt in zip(sources, targets, strict=True):
        if len(src.ids) - 1 <= max_len and len(tgt.ids) <= max_len:
            examples.append((src.ids, [1, *tgt.ids, 2]))
    return examples


def make_batches(examples: Sequence[Example], max_tokens: int) -> list[list[int]]:
    """Group indices of similar length so that rows × longest side ≤ max_tokens per batch."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), len(examples[i][1])))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(len(examples[i][0]), len(examples[i][1]))
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    return batches + [current] if current else batches


def collate(examples: Sequence[Example], indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Right-padded int64 tensors: src/src_mask (B, S), tgt_in/labels (B, T), pad = 0."""
    rows = [examples[i] for i in indices]
    src = _pad([s for s, _ in rows])
    tgt = _pad([t for _, t in rows])  # (B, T + 1): <s> … </s>
    return {"src": src, "src_mask": (src != 0).long(), "tgt_in": tgt[:, :-1], "labels": tgt[:, 1:]}


def _pad(seqs: Sequence[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def learning_rate(step: int, d_model: int, warmup: int, factor: float) -> float:
    """lrate = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) (paper eq. 3)."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def batch_loss(model: Transformer, batch, smoothing: float, bf16: bool) -> torch.Tensor:
    """Mean cross-entropy per non-pad target token."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch["src"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        batch["labels"].flatten(),
        ignore_index=0,
        label_smoothing=smoothing,
    )


@torch.no_grad()
def validation_loss(model: Transformer, examples, batches, bf16: bool) -> float:
    """Token-weighted cross-entropy (no smoothing) over a held-out split."""
    model.eval()
    total, tokens = 0.0, 0
    for indices in batches:
        batch = collate(examples, indices)
        n = int((batch["labels"] != 0).sum())
        total += float(batch_loss(model, batch, 0.0, bf16)) * n
        tokens += n
    model.train()
    return total / max(tokens, 1)


@dataclass
class Progress:
    """Where training stands; saved in checkpoint.pt so --resume continues the same stream."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0


def epoch_order(num_batches: int, seed: int, epoch: int) -> list[int]:
    """A seeded shuffle per epoch, so --resume replays the exact batch order."""
    order = list(range(num_batches))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def save_checkpoint(out: Path, model, optimizer, progress: Progress, args) -> None:
    """Write training state atomically, and the loadable model files next to it."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "args": vars(args),
        "config": asdict(model.config),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = out / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / CHECKPOINT_FILE)
    model.save(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; the architecture ones are ignored by --resume."""
    p = argparse.ArgumentParser(
        prog="python examples/translator/train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--max-minutes", type=float, default=45.0, help="wall-clock budget (this run)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: none)")
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--max-len", type=int, default=60, help="longest training side, in tokens")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--encoder-layers", type=int, default=3)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch side")
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--lr-factor", type=float, default=1.0, help="scales the paper's schedule")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="bf16 autocast for matmuls (fp32 master weights); ~3x faster on AVX512",
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    return p.parse_args(argv)


def prepare_data(args: argparse.Namespace) -> tuple[Tokenizer, list[Example], list[Example]]:
    """Write (or reuse) the split files and tokenizer.json; encode train and valid."""
    data = args.out / "data"
    if not (data / "train.tsv").is_file():
        write_splits(data)
    train_pairs, valid_pairs = read_split(data / "train.tsv"), read_split(data / "valid.tsv")
    path = args.out / TOKENIZER_FILE
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:  # training split only: no test-book word shapes leak into the vocabulary
        texts = [p.source for p in train_pairs] + [p.target for p in train_pairs]
        tokenizer = build_tokenizer(texts, args.vocab_size)
        tokenizer.save(str(path))
    train = encode_pairs(tokenizer, train_pairs, args.max_len)
    valid = encode_pairs(tokenizer, valid_pairs, VALID_MAX_LEN)
    tqdm.write(
        f"{len(train)}/{len(train_pairs)} training pairs of <= {args.max_len} tokens, "
        f"{len(valid)}/{len(valid_pairs)} validation pairs"
    )
    return tokenizer, train, valid


def model_config(args: argparse.Namespace, vocab_size: int) -> TransformerConfig:
    """Pre-norm (the paper is post-norm): small models train without a long warm-up."""
    return TransformerConfig(
        vocab_size=vocab_size,
        d_model=args.d_model,
        num_heads=args.heads,
        num_encoder_layers=args.encoder_layers,
        num_decoder_layers=args.decoder_layers,
        d_ff=args.d_ff,
        dropout=args.dropout,
        max_positions=256,
        pre_norm=True,
    )


def train_step(model, optimizer, batch, lr: float, args: argparse.Namespace) -> float:
    """One optimizer step at learning rate `lr`; returns the batch loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = batch_loss(model, batch, args.label_smoothing, args.precision == "bf16")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
    optimizer.step()
    return loss.item()


class Meter:
    """Running train loss and throughput between two checkpoints."""

    def __init__(self) -> None:
        self.start, self.loss, self.steps, self.tokens = time.monotonic(), 0.0, 0, 0

    def add(self, loss: float, batch: dict[str, torch.Tensor]) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1
        self.tokens += int(batch["src_mask"].sum() + (batch["labels"] != 0).sum())

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.monotonic() - self.start, 1e-9)


def checkpoint(args, model, optimizer, progress: Progress, meter: Meter, valid) -> None:
    """Validate, save, and append one JSON line to the log."""
    bf16 = args.precision == "bf16"
    valid_loss = validation_loss(model, *valid, bf16) if valid[0] else float("nan")
    save_checkpoint(args.out, model, optimizer, progress, args)
    record = {
        "step": progress.step,
        "epoch": progress.epoch,
        "train_loss": round(meter.loss / max(meter.steps, 1), 4),
        "valid_loss": round(valid_loss, 4),
        "valid_ppl": round(math.exp(valid_loss), 2),
        "lr": learning_rate(progress.step, args.d_model, args.warmup, args.lr_factor),
        "tokens_per_s": round(meter.tokens_per_second()),
        "train_minutes": round(progress.train_seconds / 60, 2),
    }
    with (args.out / LOG_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    tqdm.write(json.dumps(record))


def run(args, model, optimizer, progress: Progress, train, valid) -> None:
    """The training loop: whole epochs of shuffled batches until steps or minutes run out."""
    batches = make_batches(train, args.max_tokens)
    valid = (valid, make_batches(valid, args.max_tokens))
    deadline = time.monotonic() + args.max_minutes * 60
    bar = tqdm(initial=progress.step, total=args.max_steps or None, unit="step", mininterval=5)
    meter, last = Meter(), time.monotonic()
    model.train()
    while True:
        order = epoch_order(len(batches), args.seed, progress.epoch)
        for position in range(progress.batch_in_epoch, len(order)):
            if time.monotonic() >= deadline or progress.step >= (args.max_steps or math.inf):
                bar.close()
                if meter.steps:
                    checkpoint(args, model, optimizer, progress, meter, valid)
                return
            batch = collate(train, batches[order[position]])
            lr = learning_rate(progress.step + 1, args.d_model, args.warmup, args.lr_factor)
            meter.add(train_step(model, optimizer, batch, lr, args), batch)
            progress.step, progress.batch_in_epoch = progress.step + 1, position + 1
            now = time.monotonic()
            progress.train_seconds, last = progress.train_seconds + now - last, now
            bar.update(1)
            bar.set_postfix(
                loss=f"{meter.loss / meter.steps:.3f}",
                lr=f"{lr:.2e}",
                tok_s=f"{meter.tokens_per_second():.0f}",
                epoch=progress.epoch,
            )
            if progress.step % args.checkpoint_every == 0:
                checkpoint(args, model, optimizer, progress, meter, valid)
                meter = Meter()
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0


def resume_args(args: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The checkpoint's hyper-parameters, with this call's budget and threads."""
    state = torch.load(args.out / CHECKPOINT_FILE, weights_only=False)
    saved = argparse.Namespace(**state["args"])
    for name in ("max_minutes", "max_steps", "threads", "checkpoint_every"):
        setattr(saved, name, getattr(args, name))
    saved.out, saved.resume = args.out, True
    return saved, state


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python examples/translator/train.py`."""
    args = parse_args(argv)
    state = None
    if args.resume:
        args, state = resume_args(args)
    elif (args.out / CHECKPOINT_FILE).exists():
        raise SystemExit(f"{args.out} already holds a checkpoint: pass --resume or another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer, train, valid = prepare_data(args)
    model = Transformer(model_config(args, tokenizer.get_vocab_size()))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)
    progress = Progress()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress(**state["progress"])
        torch.set_rng_state(state["torch_rng"])
    params = sum(p.numel() for p in model.parameters())
    tqdm.write(f"model: {params:,} parameters, vocabulary {tokenizer.get_vocab_size()}")
    run(args, model, optimizer, progress, train, valid)


if __name__ == "__main__":
    main()
