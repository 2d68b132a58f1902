"""The model's tokenizer at the HTTP edge: token strings for logprobs, and the
``/tokenize`` and ``/detokenize`` routes.

The ingress loads the tokenizer itself (the model folder's tokenizer files,
the same ones the replicas' engines load) rather than asking a replica: these
are pure text functions, and a replica's event loop is busy streaming turns.
Loaded on first use, off the event loop.

Token strings follow OpenAI: ``token`` is the token's text, ``bytes`` its exact
UTF-8 bytes (a token holding part of a multi-byte character shows U+FFFD in
``token``; its ``bytes`` are still exact). For byte-level BPE tokenizers (GPT-2
style, the Llama 3 and SmolLM families) the bytes come from the token's byte
alphabet; otherwise from the decoded text.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from swiftinfer_core.conversation.chat_format import ChatFormat


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character -> the byte it stands for:
    printable Latin-1 bytes stand for themselves, the other 68 bytes are shifted
    to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTES = _byte_alphabet()


class TextCodec:
    """Tokenizer + chat template of the served model."""

    def __init__(self, tokenizer, allow_control_tokens: bool = False, max_tokens: int | None = None, template: str | None = None):
        self.tok = tokenizer
        self.format = ChatFormat(tokenizer, allow_control_tokens, max_tokens, template)  # template: EngineConfig.chat_template
        self.vocab = len(tokenizer)
        self.token_bytes = lru_cache(maxsize=1 << 16)(self._token_bytes)

    @classmethod
    def load(cls, model: str, allow_control_tokens: bool = False, max_tokens: int | None = None,
             template: str | None = None) -> "TextCodec":
        from transformers import AutoTokenizer

        from swiftinfer_core.model.catalog import resolve_model

        return cls(AutoTokenizer.from_pretrained(resolve_model(model)), allow_control_tokens, max_tokens, template)

    def _token_bytes(self, token_id: int) -> bytes:
        piece = self.tok.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(c in _BYTES for c in piece):
            return bytes(_BYTES[c] for c in piece)
        return self.tok.decode([token_id]).encode("utf-8")

    def entry(self, token_id: int, logprob: float) -> dict:
        """One OpenAI logprob entry (without ``top_logprobs``)."""
        raw = self.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def chat_logprobs(self, logprobs: list) -> list[dict]:
        """engine TokenLogprobs -> OpenAI chat ``logprobs.content`` items."""
        out = []
        for lp in logprobs:
            item = self.entry(lp.token, lp.logprob)
            item["top_logprobs"] = [self.entry(t, v) for t, v in lp.top]
            out.append(item)
        return out

    def prompt_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A client's prompt text: the tokenizer's special prefix (BOS, if it adds
        one), then the text encoded as plain text, as message content is."""
        special = list(self.tok("", add_special_tokens=True).input_ids) if add_special_tokens else []
        encode = self.format.encode if self.format.allow_control_tokens else self.format.encode_as_text
        return special + encode(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


class CodecHolder:
    """Loads the codec once, on first use, in a thread."""

    def __init__(self, model: str, allow_control_tokens: bool, max_tokens: int, template: str | None = None):
        self._args = (model, allow_control_tokens, max_tokens, template)
        self._codec: TextCodec | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> TextCodec:
        if self._codec is None:
            async with self._lock:
                if self._codec is None:
                    self._codec = await asyncio.to_thread(TextCodec.load, *self._args)
        return self._codec
