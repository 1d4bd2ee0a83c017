"""Tiny seeded models and tokenizers for tests (torch imported by callers that need it)."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "le chat est sur le tapis",
    "un chien court dans le parc",
    "where is the small red house",
    "où est la petite maison rouge",
    "numbers one two three four five",
    "café crème, déjà vu — naïve façade",
]


def tiny_tokenizer(vocab_size: int = 120):
    """A BPE tokenizer following the seed convention: <pad>=0 <s>=1 </s>=2 <unk>=3, sources end with </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator(SENTENCES * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return tok


def tiny_transformer(seed: int = 1, vocab_size: int = 120, **overrides):
    """Odd sizes (3 heads, d_model 24, 2+3 layers) and wide weights so greedy outputs vary."""
    import torch

    from seqport.export.models import Transformer, TransformerConfig

    torch.manual_seed(seed)
    config = dict(
        vocab_size=vocab_size,
        d_model=24,
        num_heads=3,
        num_encoder_layers=2,
        num_decoder_layers=3,
        d_ff=40,
        dropout=0.0,
        max_positions=40,
        pre_norm=True,
    )
    config.update(overrides)
    model = Transformer(TransformerConfig(**config))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # std 2/sqrt(fan_in): random models otherwise repeat one token
                param.normal_(0.0, 2.0 / param.shape[1] ** 0.5)
        model.embed.weight.normal_(0.0, 0.05)  # a small tied embedding keeps outputs from looping
    return model.eval()


def write_tiny_checkpoint(folder: Path, seed: int = 1, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_transformer(seed, **overrides)
    model.save(folder)
    tiny_tokenizer(model.config.vocab_size).save(str(folder / "tokenizer.json"))
    return folder
