"""Constrained decoding with llguidance: a token mask only when the model's own choice is wrong.

llama.cpp's grammar sampler computes a mask over the whole vocabulary for every token, which
halves SmolLM2's speed and cuts Gemma-270M's (262k tokens) to a third. Here we decode in our
own loop instead:

- tokens the grammar forces (`{"thoughts": {"text": "`, a command's `"args": {`) are
  fast-forwarded: evaluated in one batch, never sampled;
- otherwise the model's token is picked from its raw logits and checked against the grammar;
  only if the grammar rejects it is the full mask computed and the token picked again.
  Sampling from the raw distribution, then from the masked one on rejection, yields exactly
  the masked distribution, so this is not an approximation.

No Python callback runs inside llama.cpp: llama-cpp-python swallows exceptions raised in a
logits processor and then decodes unconstrained, which is what we must never return.

A reasoning model's reply may open with a think block (`ThinkBlock`): the grammar is then a
Lark one (`reply_grammar`) that bounds the block's tokens and embeds the same JSON schema.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np
from llguidance import LLMatcher, LLTokenizer
from llguidance.llamacpp import lltokenizer_from_vocab
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from offline_agent.errors import BackendError
from offline_agent.llm.chat_format import ThinkStart
from offline_agent.records import THINK_CLOSE, THINK_OPEN
from offline_agent.reply import BLOCKS_KEY, CODE_KEY, FENCE, split_blocks

if TYPE_CHECKING:  # a TypedDict that exists only in llguidance's stubs
    from llguidance._lib import JsonCompileOptions

JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": True, "whitespace_pattern": "[ ]?"}
"""At most one space between JSON tokens, as in llama-cpp-python's GBNF: both engines then
allow the same texts, and at temperature 0 the model writes (nearly) the same replies."""


THINK_MARGIN = 16
"""Tokens a think block may take beyond its bound: its tags and the blank line after it."""


@dataclass(frozen=True)
class ThinkBlock:
    """A think block allowed before the JSON reply: at most `max_tokens` tokens of thinking,
    then its closing tag. `opened`: the prompt opened it, so the reply starts inside it and
    must close it; otherwise the reply may open one or not."""

    max_tokens: int
    opened: bool = False

    @property
    def reserve(self) -> int:
        """Tokens to set aside for it, in the context and in the decode."""
        return self.max_tokens + THINK_MARGIN

    @classmethod
    def allowed(cls, start: ThinkStart, max_tokens: int) -> ThinkBlock | None:
        """The block a reply starting at `start` may have with `max_tokens` (0: none at all;
        a block the prompt opened is then closed at once); None where it has none."""
        if start == "opened":
            return cls(max_tokens, opened=True)
        if start == "may" and max_tokens > 0:
            return cls(max_tokens)
        return None


BLOCK_TEXT = rf"BLOCK_TEXT: /((.|\n)*\n)?{FENCE}/ & ~/(.|\n)*{FENCE}(.|\n)+/"
"""A block's text with its closing fence: one lexeme, ending at the first ``` it holds."""

CODE_TEXT = rf"CODE_TEXT: /[ \t\n]*[^ \t\n](.|\n)*\n{FENCE}/ & ~/(.|\n)*{FENCE}(.|\n)+/"
"""The same for code, which is not empty: asked for code, Gemma-3-270M closed the block at
once."""


def _statement_text(restart: str) -> str:
    """The lexeme of code after a forced header: it starts with a statement, not a comment, a
    string or a blank line (under its docstring, Gemma-3-270M wrote the docstring again, or
    comments), and ends at its closing fence or, given `restart` (letters, digits and
    `"_./:-` only), where a line begins with it: the model began the document anew."""
    again = re.sub(r'([."/])', r"\\\1", restart) if restart else ""
    end = f"({FENCE}|{again})" if again else FENCE
    inner = f"({FENCE}|\\n{again})" if again else FENCE  # mid-line, the name is only text
    return rf"STATEMENT_TEXT: /[^ \t\n#\"'](.|\n)*\n{end}/ & ~/(.|\n)*{inner}(.|\n)+/"


def reply_grammar(
    schema: dict[str, Any],
    think: ThinkBlock | None = None,
    special: tuple[int, int] | None = None,
) -> str:
    """The Lark grammar of a reply: `think` first if given, then JSON of `schema`, and after
    the JSON of a command with a text block (`reply.BLOCKS_KEY`), the block; or, for a code
    turn's answer (`reply.CODE_KEY`), the fenced block alone.

    `special`: the vocabulary's own tokens for the two think tags, which a reasoning model
    writes (Qwen3's and the R1 distills' `<think>` is one token); the thinking may then hold
    any text but the closing tag. Without them the tags are text, and the thinking holds no
    `<`: the lexer reads greedily, so it could not tell where the closing tag began. When
    the bound is reached the closing tag is forced. A block's text is one lexeme with its
    closing fence, for the same reason: it ends at the first ``` it holds.
    """
    lines = ["start: reply"] if think is None else _think_rules(think, special)
    if CODE_KEY in schema:  # a code turn's answer: one fenced block, its opening forced
        code = schema[CODE_KEY]
        opening = json.dumps(f"{FENCE}{code['language']}\n{code.get('header', '')}")
        text = "STATEMENT_TEXT" if code.get("header") else "CODE_TEXT"
        return "\n".join([
            *lines,
            f"reply: {opening} code",
            f"code[max_tokens={code['max_tokens']}]: {text}",  # ends it there, unclosed
            _statement_text(code.get("restart", "")) if code.get("header") else CODE_TEXT,
        ]) + "\n"  # fmt: skip
    plain, blocks = split_blocks(schema)
    choices = []
    if plain is not None:
        choices.append("json")
        lines.append(f"json: %json {json.dumps({**plain, 'x-guidance': JSON_OPTIONS})}")
    for i, branch in enumerate(blocks.values()):
        choices.append(f"with_block{i}")
        lines.append(
            f"with_block{i}: %json {json.dumps({**branch, 'x-guidance': JSON_OPTIONS})} "
            f"{json.dumps(chr(10) + FENCE)} FENCE_TAG {json.dumps(chr(10))} BLOCK_TEXT"
        )
    lines.append(f"reply: {' | '.join(choices)}")
    if blocks:
        lines += ["FENCE_TAG: /[A-Za-z0-9_+.-]{0,16}/", BLOCK_TEXT]
    return "\n".join(lines) + "\n"


def _think_rules(block: ThinkBlock, special: tuple[int, int] | None) -> list[str]:
    """The rules of a think block and the reply after it."""
    if special is not None:
        open_tag, close_tag = (f"<[{token}]>" for token in special)
        closing = THINK_CLOSE.replace("/", r"\/")
        text = rf"/(.|\n)*/ & ~/(.|\n)*{closing}(.|\n)*/"
    else:
        open_tag, close_tag = json.dumps(THINK_OPEN), json.dumps(THINK_CLOSE)
        text = "/[^<]*/"
    body = f"think_text {close_tag} GAP?" if block.max_tokens else f"{close_tag} GAP?"
    lines = [f"start: {body} reply" if block.opened else f"start: ({open_tag} {body})? reply"]
    if block.max_tokens:
        lines.append(f"think_text[max_tokens={block.max_tokens}]: {text}")
    lines.append(r"GAP: /[ \n]{1,4}/")
    return lines


@dataclass(frozen=True)
class Decoded:
    """What one constrained decode produced, with its timings."""

    tokens: list[int]
    text: str
    finished: bool
    """The grammar was complete, or the decode stopped in a loop (`stop_loops`); False when
    `max_tokens` cut the reply off."""
    prompt_tokens: int
    cached_tokens: int
    prompt_seconds: float
    forced_tokens: int
    """Tokens fast-forwarded without sampling."""
    masked_tokens: int
    """Tokens for which the model's first choice was rejected and the full mask computed."""
    logprob: float
    """Mean log-probability the model gave the tokens it chose (its raw distribution, before
    the grammar's mask; forced tokens excluded): how sure it was of this reply."""


class GuidedDecoder:
    """llguidance bound to one loaded llama.cpp model; grammars are compiled once per schema."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self._llm = llm
        vocab = llm._model.vocab
        self.n_vocab = int(llm.n_vocab())
        self.end_tokens = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self._tokenizer: LLTokenizer | None = None
        self._grammars: dict[str, str] = {}
        self._mask = allocate_token_bitmask(1, self.n_vocab)
        self._rng = np.random.default_rng()

    @property
    def tokenizer(self) -> LLTokenizer:
        """The vocabulary as llguidance sees it; built on first use (~2 s for Gemma's 262k)."""
        if self._tokenizer is None:
            # llguidance reads each token's attributes with `llama_token_get_attr`, which
            # llama-cpp-python 0.3.17+ wraps in a DeprecationWarning: one per token (262k).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._tokenizer = lltokenizer_from_vocab(
                    self._llm._model.vocab, n_vocab=self.n_vocab, eos_token=self.end_tokens
                )
        return self._tokenizer

    @property
    def think_tokens(self) -> tuple[int, int] | None:
        """The vocabulary's special tokens for `<think>` and `</think>`, if it has both."""
        found = []
        for tag in (THINK_OPEN, THINK_CLOSE):
            tokens = self._llm.tokenize(tag.encode(), add_bos=False, special=True)
            if len(tokens) != 1 or not self.tokenizer.is_special_token(tokens[0]):
                return None
            found.append(tokens[0])
        return found[0], found[1]

    def matcher(self, schema: dict[str, Any], think: ThinkBlock | None = None) -> LLMatcher:
        """A fresh matcher for `schema`, after `think` when given; BackendError if llguidance
        cannot compile it."""
        key = json.dumps(schema) if think is None else f"{think} {json.dumps(schema)}"
        if key not in self._grammars:
            try:
                self._grammars[key] = (
                    LLMatcher.grammar_from_json_schema(key, defaults=JSON_OPTIONS)
                    if think is None and BLOCKS_KEY not in schema and CODE_KEY not in schema
                    else LLMatcher.grammar_from_lark(
                        reply_grammar(schema, think, self.think_tokens if think else None)
                    )
                )
            except ValueError as err:
                raise BackendError(f"llguidance cannot read the schema: {err}") from None
        matcher = LLMatcher(self.tokenizer, self._grammars[key], log_level=0)
        if matcher.is_error():
            raise BackendError(f"llguidance cannot compile the schema: {matcher.get_error()}")
        return matcher

    def seed(self, seed: int) -> None:
        """Reseed the sampler used at temperatures above zero."""
        self._rng = np.random.default_rng(seed)

    def decode(
        self,
        prompt: list[int],
        matcher: LLMatcher,
        *,
        max_tokens: int,
        temperature: float,
        break_loops: bool = False,
        stop_loops: bool = False,
    ) -> Decoded:
        """Evaluate `prompt` (reusing the KV cache) and decode until the grammar is complete;
        with `break_loops`, never choosing the token `loop_token` names; with `stop_loops`,
        ending there instead, as complete (a document that went round in a loop)."""
        try:
            return self._decode(
                prompt, matcher, max_tokens, temperature, break_loops, stop_loops=stop_loops
            )
        except BackendError:
            raise
        except Exception as err:  # never fall back to unconstrained output
            raise BackendError(f"constrained decoding failed: {type(err).__name__}: {err}") from err

    def _decode(
        self,
        prompt: list[int],
        matcher: LLMatcher,
        max_tokens: int,
        temperature: float,
        break_loops: bool,
        *,
        stop_loops: bool = False,
    ) -> Decoded:
        llm = self._llm
        cached = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt[:-1])
        llm.n_tokens = cached
        start = time.perf_counter()
        llm.eval(prompt[cached:])
        prompt_seconds = time.perf_counter() - start
        # Forced tokens come in batches of a few: decoded with the generation threads, not the
        # prompt's batch threads, whose barriers stall for seconds when the cores are busy.
        params = llm.context_params
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, params.n_threads, params.n_threads)
        try:
            out, forced, masked, logprob, looped = self._generate(
                matcher,
                max_tokens,
                temperature,
                prompt if break_loops or stop_loops else None,
                stop_loops,
            )
        finally:
            llama_cpp.llama_set_n_threads(llm._ctx.ctx, params.n_threads, params.n_threads_batch)
        self._check(matcher)
        # special: a think block's tags are the vocabulary's own tokens, and the grammar
        # admits no other special token.
        text = llm.detokenize(out, special=True).decode("utf-8", errors="replace")
        return Decoded(
            out,
            text,
            matcher.is_accepting() or looped,
            len(prompt),
            cached,
            prompt_seconds,
            forced,
            masked,
            logprob,
        )

    def _generate(
        self,
        matcher: LLMatcher,
        max_tokens: int,
        temperature: float,
        prompt: list[int] | None,
        stop: bool = False,
    ) -> tuple[list[int], int, int, float, bool]:
        """Decode until the grammar is complete: (tokens, how many forced, how many masked,
        the chosen tokens' mean log-probability, whether it stopped in a loop). Given the
        `prompt`, loops are broken (`loop_token`), or with `stop` end the decode."""
        llm = self._llm
        out: list[int] = []
        forced = masked = 0
        logprobs: list[float] = []
        # The tokens forced before the model chose one are given, like the prompt: a loop is
        # the model's own, and a file's repeated lines in a document's opening are a copy.
        opening, seen = 0, prompt
        while len(out) < max_tokens and not matcher.is_stopped():
            ff = matcher.compute_ff_tokens()[: max_tokens - len(out)]
            if ff:
                self._consume(matcher, ff)
                llm.eval(ff)
                out += ff
                forced += len(ff)
                if opening == len(out) - len(ff) and prompt is not None:
                    opening, seen = len(out), [*prompt, *out]
                continue
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(self.n_vocab,)
            )
            allowed = logits  # the model's own, unless a loop rules a token out
            looping = loop_token(out[opening:], seen) if seen is not None else None
            if looping is not None and stop:
                return out, forced, masked, float(np.mean(logprobs)) if logprobs else 0.0, True
            if looping is not None:
                allowed = logits.copy()
                allowed[looping] = LOOP_LOGIT
            token = self._pick(allowed, temperature)
            if token in self.end_tokens and matcher.is_accepting():
                break
            if token in self.end_tokens or matcher.try_consume_tokens([token]) != 1:
                masked += 1
                fill_next_token_bitmask(matcher, self._mask)
                token = self._pick(_masked(allowed, self._mask[0]), temperature)
                if token in self.end_tokens and matcher.is_accepting():
                    break
                self._consume(matcher, [token])
            logprobs.append(_logprob(logits, token))
            out.append(token)
            if matcher.is_stopped():
                break
            llm.eval([token])
        return out, forced, masked, float(np.mean(logprobs)) if logprobs else 0.0, False

    def _pick(self, logits: np.ndarray[Any, np.dtype[np.float32]], temperature: float) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        scaled = (logits - logits.max()) / temperature
        probs = np.exp(scaled, dtype=np.float64)
        probs /= probs.sum()
        return int(self._rng.choice(self.n_vocab, p=probs))

    @staticmethod
    def _consume(matcher: LLMatcher, tokens: list[int]) -> None:
        if not matcher.consume_tokens(tokens):
            raise BackendError(f"llguidance rejected tokens {tokens}: {matcher.get_error()}")

    @staticmethod
    def _check(matcher: LLMatcher) -> None:
        if matcher.is_error():
            raise BackendError(f"llguidance failed: {matcher.get_error()}")


LOOP_SPAN = 32
"""How many tokens a reply may repeat in a row, as copies of one run of tokens, before the
token that would go on repeating is ruled out (`loop_token`)."""
LOOP_PERIOD = 64
"""The longest run of tokens `loop_token` looks for copies of."""
LOOP_LOGIT = -1e30
"""The logit a looping token gets: below every other token, yet finite, so that it is still
chosen where the grammar allows nothing else."""


def loop_token(out: Sequence[int], prompt: Sequence[int] = ()) -> int | None:
    """The token that would continue a loop at the end of the reply `out`, or None.

    A loop: `out` ends in copies of one run of tokens, back to back, at least `LOOP_SPAN`
    tokens of them and at least two copies; its token is the one that would go on repeating.
    Greedy decoding of a small model can repeat a sentence until the token limit; ruling
    this one token out makes it leave the loop at once (the idea of DRY, "don't repeat
    yourself", among llama.cpp's samplers). A repetition the `prompt` holds as long is a
    copy, not a loop (a file of many equal lines being copied): it may go on.
    """
    out = list(out)
    for period in range(1, min(LOOP_PERIOD, len(out) // 2) + 1):
        copies = max(2, -(-LOOP_SPAN // period))
        if copies * period > len(out) or out[-copies * period :] != out[-period:] * copies:
            continue
        run = copies * period  # how far back the repetition goes
        while run < len(out) and out[-run - 1] == out[-run - 1 + period]:
            run += 1
        following = out[-period]
        return None if _holds(prompt, [*out[-run:], following]) else following
    return None


def _holds(tokens: Sequence[int], part: Sequence[int]) -> bool:
    """Whether `part` occurs in `tokens`, contiguous."""
    haystack = np.asarray(tokens, dtype=np.int64).tobytes()
    needle = np.asarray(part, dtype=np.int64).tobytes()
    start = haystack.find(needle)
    while start != -1 and start % 8:  # a match must start at a token's first byte
        start = haystack.find(needle, start + 1)
    return start != -1


def _logprob(logits: np.ndarray[Any, np.dtype[np.float32]], token: int) -> float:
    """log softmax(logits)[token], computed stably."""
    top = float(logits.max())
    return float(logits[token]) - top - float(np.log(np.exp(logits - top, dtype=np.float64).sum()))


def _masked(
    logits: np.ndarray[Any, np.dtype[np.float32]], mask: np.ndarray[Any, np.dtype[np.int32]]
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A copy of `logits` with the tokens the bitmask forbids set to -inf."""
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[: logits.shape[0]]
    if not allowed.any():
        raise BackendError("llguidance allows no token at all")
    return np.where(allowed.astype(bool), logits, np.float32(-np.inf))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
