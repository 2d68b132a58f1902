"""Structured output: grammar-constrained decoding with xgrammar.

A turn whose ``SamplingParams.grammar`` is set gets its own matcher
(``GrammarState``), made when the turn is added and dropped with it: the
grammar state lives with the turn, so a session's next turn starts clean. At a
step that samples constrained rows:

1. each constrained row's matcher fills its row of a CPU int32 bitmask
   ``[C, ceil(V/32)]`` (bit ``j`` of word ``w`` set: token ``32*w + j`` allowed);
2. ``mask_logits`` copies it to the logits' device once, unpacks it there to a
   bool ``[C, V]`` and sets the disallowed logits of those rows to -inf;
3. after sampling, each matcher accepts its row's token (EngineCore).

A step with no constrained row builds nothing and copies nothing. JSON is
compiled compact (``", "`` and ``": "`` separators, no free whitespace): a small
model at temperature 1 cannot wander off into endless blank lines, and the
text of a reply is fixed by its values (deployments/http/tool_calls.py relies on it).
Strict mode: an object takes no property its schema does not allow, so a
reply always validates against the schema as given.
The grammar's end is the model's end token, so a constrained reply ends when
its JSON is complete. ``Grammar.before`` / ``after`` put fixed text around the
JSON (a chat template's tool-call tags: conversation/tool_syntax.py).
``xgrammar`` is imported on first use only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from swiftinfer_core.config import Grammar
from swiftinfer_core.errors import InvalidRequestError

ANY_OBJECT = '{"type": "object"}'
SEPARATORS = (", ", ": ")  # between items, between a key and its value


COMPACT = {"any_whitespace": False, "separators": SEPARATORS, "strict_mode": True}


def _xgr():
    import xgrammar

    return xgrammar


def _schema_text(g: Grammar) -> str:
    return ANY_OBJECT if g.kind == "json_object" else g.json_schema


def check_schema(schema_text: str) -> None:
    """InvalidRequestError unless ``schema_text`` is a JSON schema the grammar
    library can enforce (no tokenizer needed: the ingress checks before a turn)."""
    try:
        json.loads(schema_text)
        _xgr().Grammar.from_json_schema(schema_text, **COMPACT)
    except Exception as exc:  # json's and xgrammar's errors alike (RuntimeError, InvalidJSONError)
        raise InvalidRequestError(f"unsupported JSON schema: {str(exc).splitlines()[-1][:300]}") from None


def wrapped(g: Grammar):
    """The xgrammar grammar of ``before`` + the JSON + ``after``."""
    xgr = _xgr()
    parts = [xgr.Grammar.from_json_schema(_schema_text(g), **COMPACT)]
    if g.before:
        parts.insert(0, xgr.Grammar.from_ebnf(f"root ::= {json.dumps(g.before)}"))
    if g.after:
        parts.append(xgr.Grammar.from_ebnf(f"root ::= {json.dumps(g.after)}"))
    return xgr.Grammar.concat(*parts)


@dataclass
class GrammarState:
    """One turn's matcher (``xgrammar.GrammarMatcher``)."""

    matcher: object

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """False when the token breaks the grammar (it cannot when sampled under the mask)."""
        return bool(self.matcher.accept_token(token))


class Grammars:
    """Compiles grammars for one tokenizer and vocabulary (the logits' width,
    which may exceed the tokenizer's: the extra ids are never allowed)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self._tokenizer, self.vocab_size, self._eos = tokenizer, vocab_size, sorted(eos_ids)
        self._compiler = None  # built on the first constrained turn (about 0.5 s for a 49k vocabulary)

    def _get_compiler(self):
        if self._compiler is None:
            xgr = _xgr()
            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._eos)
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)  # compiled grammars cached by schema text
        return self._compiler

    def start(self, g: Grammar) -> GrammarState:
        """A fresh matcher for one turn (InvalidRequestError for a schema it cannot compile)."""
        compiler = self._get_compiler()
        try:
            if g.before or g.after:
                compiled = compiler.compile_grammar(wrapped(g))
            else:
                compiled = compiler.compile_json_schema(_schema_text(g), **COMPACT)
        except Exception as exc:
            raise InvalidRequestError(f"unsupported JSON schema: {str(exc).splitlines()[-1][:300]}") from None
        return GrammarState(_xgr().GrammarMatcher(compiled))


def words(vocab: int) -> int:
    return (vocab + 31) // 32


def fill_bitmask(states: list[GrammarState], vocab: int) -> torch.Tensor:
    """CPU int32 bitmask [len(states), ceil(vocab/32)] of the tokens each state allows next."""
    bitmask = torch.zeros(len(states), words(vocab), dtype=torch.int32)
    for row, st in enumerate(states):
        st.fill(bitmask, row)
    return bitmask


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 [C, W] (on any device) -> bool [C, vocab], True where allowed."""
    dev = bitmask.device
    shifts = _SHIFTS.get(dev)
    if shifts is None:
        shifts = _SHIFTS[dev] = torch.arange(32, dtype=torch.int32, device=dev)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [C, W, 32]; bit 31 of a negative word: -1 & 1 == 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()


def mask_logits(logits: torch.Tensor, rows: list[int], states: list[GrammarState], inplace: bool = False) -> torch.Tensor:
    """logits [R, V] -> logits whose rows ``rows`` allow only what ``states``
    (one per row, in order) allow: one [C, W] host-to-device copy, dense passes
    over those rows. A new tensor unless ``inplace`` (the input may be a CUDA
    graph's output buffer)."""
    vocab, dev = logits.shape[-1], logits.device
    allowed = unpack(fill_bitmask(states, vocab).to(dev), vocab)  # [C, V]
    out = logits if inplace else logits.clone()
    idx = torch.tensor(rows, dtype=torch.long, device=dev)
    out.index_copy_(0, idx, out.index_select(0, idx).masked_fill(~allowed, float("-inf")))
    return out
