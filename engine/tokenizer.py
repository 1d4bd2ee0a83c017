"""Text ↔ ids through a `tokenizers` tokenizer.json, the only tokenizer format the engine reads."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from seqport.engine.errors import ArtifactError, ManifestError
from seqport.engine.inputs import check_unicode


class TextTokenizer:
    """Thin wrapper that switches off padding/truncation saved in the file.

    Some tokenizer.json files ship with padding to a fixed length switched on (all-MiniLM-L6-v2
    pads to 128); the engine pads itself, so both are disabled here.
    """

    def __init__(self, path: str | Path, add_special_tokens: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"tokenizer file missing: {path}. Re-export the model.")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise ManifestError(f"{path} is not a valid tokenizers file: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.add_special_tokens = add_special_tokens

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Source texts → ids, with the special tokens the tokenizer's post-processor adds.

        Raises:
            InputError: a text that is not valid Unicode (naming its index).
        """
        for index, text in enumerate(texts):
            check_unicode(text, f"input {index}")
        if len(texts) == 1:  # encode_batch releases the GIL: its caller (a server's event loop) may then wait for it
            return [self._tokenizer.encode(texts[0], add_special_tokens=self.add_special_tokens).ids]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=self.add_special_tokens)
        return [e.ids for e in encodings]

    def encode_plain(self, text: str) -> list[int]:
        """Ids without special tokens (a target prefix, a stop word)."""
        check_unicode(text, f"text {text[:20]!r}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (streaming decodes through it with DecodeStream)."""
        return self._tokenizer

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)
