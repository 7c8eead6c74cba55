"""The in-process backend: a GGUF file loaded once with llama-cpp-python."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format
from llama_cpp.llama_grammar import LlamaGrammar

from offline_agent.cores import usable_cores
from offline_agent.errors import (
    BackendError,
    ConfigError,
    ContextOverflowError,
    ModelError,
    StorageError,
)
from offline_agent.gguf import describe
from offline_agent.llm.chat_format import ChatFormat, chat_format_for
from offline_agent.llm.gbnf import json_schema_grammar, parses
from offline_agent.llm.guidance import (
    LOOP_LOGIT,
    GuidedDecoder,
    ThinkBlock,
    common_prefix,
    loop_token,
)
from offline_agent.llm.kvcache import PrefixCache
from offline_agent.llm.options import LlamaOptions
from offline_agent.records import Completion, Message, Usage


@dataclass(frozen=True)
class _Decode:
    """A prompt decoded from (rendered text and tokens) and the reply's tokens."""

    prompt: bytes
    prompt_tokens: list[int]
    reply: list[int]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep llama.cpp's Python-side chatter off the terminal."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


class _UnusedChatHandlers:
    """Stands in for llama-cpp-python's `Jinja2ChatFormatter` while a model loads.

    Loading compiles the file's chat templates, with a Jinja environment that lacks loop
    controls and Hugging Face's `{% generation %}`, for chat handlers we never call (we render
    the template ourselves, `chat_format.py`): a template it cannot compile failed the load
    with a traceback, before our own renderer could take it or say why not in one line.
    """

    def __init__(self, **_: Any) -> None:
        pass

    def to_chat_handler(self) -> Any:
        """A handler that says it is not ours to call."""

        def unused(**_: Any) -> Any:
            raise BackendError("chat completions are rendered by offline_agent, not llama.cpp")

        return unused


@contextlib.contextmanager
def _own_chat_templates() -> Iterator[None]:
    """Keep llama-cpp-python from compiling chat templates while a model loads."""
    module = llama_chat_format
    original = getattr(module, "Jinja2ChatFormatter", None)
    if original is None:  # a release that no longer builds them
        yield
        return
    module.Jinja2ChatFormatter = _UnusedChatHandlers  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        module.Jinja2ChatFormatter = original  # type: ignore[misc]


class _LoopBreaker:
    """llama-cpp-python's logits processor for `break_loops`: the reply's looping token
    (`loop_token`) gets `LOOP_LOGIT`."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        reply, prompt = input_ids[self.prompt_tokens :], input_ids[: self.prompt_tokens]
        looping = loop_token(reply.tolist(), prompt)  # the prompt is read only for a loop
        if looping is not None:
            scores[looping] = LOOP_LOGIT
        return scores


KEPT_DOCUMENTS = 32
"""Greedy documents kept for reuse (a run writes a few files; a bench run, one per goal)."""


class LlamaModel:
    """A `ChatModel` running a GGUF file in this process.

    With `state_dir`, the KV state of each prompt's opening is saved there and restored by
    later processes (`kvcache.py`), so a run's first step does not evaluate it again.
    """

    def __init__(
        self,
        path: Path,
        chat_format: str,
        options: LlamaOptions,
        name: str = "",
        state_dir: Path | None = None,
    ):
        self.name = name or path.stem
        self.options = options
        trained = describe(path).context_length  # checked before llama.cpp allocates it
        if trained and options.n_ctx > trained:
            raise ModelError(
                f"context size {options.n_ctx} is larger than {self.name} supports ({trained})"
            )
        threads = options.n_threads or usable_cores()
        try:
            with _quiet(), _own_chat_templates():
                self._llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=options.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=options.n_gpu_layers,
                    seed=options.seed,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"cannot load {path}: {err}") from None
        self.format: ChatFormat = chat_format_for(
            chat_format,
            self._llm.metadata.get("tokenizer.chat_template"),
            self._token_text(self._llm.token_bos()),
            self._token_text(self._llm.token_eos()),
            thinking=options.thinking,
            model=self.name,
        )
        self.think = (
            ThinkBlock.allowed(self.format.thinking.start, options.think_tokens)
            if options.grammar_engine == "llguidance"
            else None  # llama.cpp's grammar is JSON from the first token: no think block
        )
        """The think block a constrained reply may open with (a reasoning model's)."""
        reserve = self.think.reserve if self.think is not None else 0
        if reserve * 2 > options.n_ctx:
            raise ConfigError(
                f"--think-tokens {options.think_tokens} takes over half of the context of "
                f"{options.n_ctx} tokens; lower it or raise --n-ctx"
            )
        self.text_blocks = options.grammar_engine == "llguidance"
        """Replies may end with a text block (`reply.BLOCKS_KEY`): llguidance constrains it."""
        self.breaks_loops = True
        """`complete(..., break_loops=True)` is honoured, by either grammar engine."""
        self.context_length = options.n_ctx - reserve
        """Tokens a prompt and its reply may take: the think block's are set aside."""
        self._grammars: dict[str, LlamaGrammar] = {}
        self._guided: GuidedDecoder | None = None
        self._decodes: list[_Decode] = []
        """The replies decoded from the latest prompt (several with `--samples`)."""
        self._documents: dict[tuple[str, int], Completion] = {}
        """Greedy documents by schema and bound: decoded again, one would come out the same."""
        self._pieces: dict[int, bytes] = {}
        self._window = int(llama_cpp.llama_model_n_swa(self._llm._model.model))
        """The model's sliding attention window in tokens (Gemma 3: 512); 0 when it has none."""
        # llama.cpp's sliding-window cache does not restore a saved state exactly: Gemma-3-270M's
        # logits after a restored state and more tokens differed by up to 0.8 from those of
        # the process that saved it, and its greedy replies went otherwise. Such a model's
        # states are not saved.
        self._prefixes = (
            PrefixCache(self._llm, path, state_dir)
            if state_dir is not None and not self._window
            else None
        )

    def _token_text(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _tokenize(self, text: bytes) -> list[int]:
        return list(self._llm.tokenize(text, add_bos=False, special=True))

    def _tokens(self, messages: Sequence[Message]) -> tuple[bytes, list[int]]:
        """The rendered prompt and its tokens.

        When the prompt continues the latest one decoded with a reply decoded from it (the one
        chosen, of several samples), the reply keeps the very tokens the model produced, which
        the KV cache holds. Tokenising its text again would often split it differently (the
        grammar makes the model pick tokens a tokenizer would merge), and everything from the
        first difference on would be evaluated again.
        """
        text = self.format.render(messages).encode("utf-8")
        for decode in self._decodes:
            if text == decode.prompt:  # another sample of the same prompt
                return text, decode.prompt_tokens
        spliced = [self._splice(text, decode) for decode in self._decodes]
        kept, tokens = max(spliced, key=lambda pair: pair[0], default=(0, []))
        return text, tokens if kept else self._tokenize(text)

    def _splice(self, text: bytes, last: _Decode) -> tuple[int, list[int]]:
        """`text`'s tokens reusing a decode's prompt and reply tokens, with how many of the
        reply's it reuses; (0, []) if it does not continue them."""
        if not text.startswith(last.prompt):
            return 0, []
        rest, size, kept = text[len(last.prompt) :], 0, 0
        for token in last.reply:  # the reply as far as the text still has it (it is stripped)
            piece = self._piece(token)
            if not piece or not rest.startswith(piece, size):  # b"": not a text token
                break
            size, kept = size + len(piece), kept + 1
        if kept == 0:
            return 0, []
        tail = self._tokenize(rest[size:])
        if self._llm.detokenize(tail, special=True) != rest[size:]:
            return 0, []  # e.g. a tokenizer that adds a space to text it starts with
        return kept, [*last.prompt_tokens, *last.reply[:kept], *tail]

    def _piece(self, token: int) -> bytes:
        if token not in self._pieces:
            self._pieces[token] = self._llm.detokenize([token], special=True)
        return self._pieces[token]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the rendered prompt, with the model's tokenizer; a prompt continuing the
        last decode counts the reply's decoded tokens (see `_tokens`)."""
        return len(self._tokens(messages)[1])

    def save_opening(self, messages: Sequence[Message]) -> int:
        """Evaluate the whole leading batches of the prompt `messages` make and save their KV
        state, as a first call does on its way, for later processes to restore; the tokens
        evaluated (0: the state was on disk already). StorageError when it is not saved."""
        if self._window:
            raise StorageError(
                f"{self.name} attends within a sliding window of {self._window} tokens: its KV "
                "states are not saved, as llama.cpp does not restore them exactly"
            )
        tokens = self._tokens(messages)[1]
        self._llm.n_tokens = 0  # from the disk, not from what this process holds
        evaluated = self._warm_start(tokens)[0]
        top = self._leading_batches(tokens)
        cache = self._prefixes
        if cache is None or top == 0 or not cache.path(tokens[:top]).is_file():
            where = cache.folder if cache is not None else "(no state folder)"
            raise StorageError(f"no KV state saved under {where} for a {len(tokens)}-token prompt")
        return evaluated

    def grammar(self, schema: dict[str, Any]) -> LlamaGrammar:
        """The GBNF grammar for `schema`, converted once and cached; BackendError if
        llama.cpp cannot parse it (llama-cpp-python would decode with a NULL sampler)."""
        key = json.dumps(schema)  # not sorted: property order is the order the model writes
        if key not in self._grammars:
            with _quiet():
                grammar = json_schema_grammar(key)
            if not parses(grammar, self._llm._model.vocab):
                raise BackendError(
                    "llama.cpp cannot parse the GBNF grammar of the reply schema; "
                    "use --grammar-engine llguidance"
                )
            self._grammars[key] = grammar
        return self._grammars[key]

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float | None = None,
        break_loops: bool = False,
    ) -> Completion:
        """Decode one answer; constrained by a grammar when a schema is given."""
        heat = self.options.temperature if temperature is None else temperature
        text, tokens = self._tokens(messages)
        self._decodes = [decode for decode in self._decodes if decode.prompt == text]
        if len(tokens) + max_tokens > self.context_length:
            thinking = self.options.n_ctx - self.context_length
            aside = f" ({thinking} set aside for thinking)" if thinking else ""
            raise ContextOverflowError(
                f"prompt of {len(tokens)} tokens plus {max_tokens} for the reply exceeds the "
                f"context of {self.context_length}{aside}"
            )
        warmed, warm_seconds = self._warm_start(tokens)
        if schema is not None and self.options.grammar_engine == "llguidance":
            completion, reply = self._complete_guided(tokens, schema, max_tokens, heat, break_loops)
        else:
            completion, reply = self._complete_llama(tokens, schema, max_tokens, heat, break_loops)
        self._decodes.append(_Decode(text, tokens, reply))
        if not warm_seconds:  # nothing was restored or evaluated ahead of the decoder
            return completion
        usage = completion.usage
        return replace(
            completion,
            usage=replace(usage, cached_tokens=usage.cached_tokens - warmed),
            prompt_seconds=completion.prompt_seconds + warm_seconds,
            total_seconds=completion.total_seconds + warm_seconds,
        )

    def complete_document(self, *, schema: dict[str, Any], max_tokens: int) -> Completion:
        """Decode a document of its own from the beginning of sequence, under `schema` (with
        llguidance; the next chat prompt is evaluated again past its saved opening). It ends,
        as complete, where it goes round in a loop (`loop_token`): a small model's code
        repeats a line to the bound. At temperature 0 a document asked for again is the one
        decoded before, at no cost."""
        if self.options.grammar_engine != "llguidance":
            raise BackendError("a document is decoded with the llguidance engine only")
        key = (json.dumps(schema), max_tokens)
        if key in self._documents:
            again = self._documents[key]
            return replace(again, usage=Usage(1, 0, 1), prompt_seconds=0.0, total_seconds=0.0)
        tokens = list(self._llm.tokenize(b"", add_bos=True, special=False))
        heat = self.options.temperature
        completion, _ = self._complete_guided(
            tokens, schema, max_tokens, heat, False, document=True
        )
        if heat == 0:
            self._documents[key] = completion
            if len(self._documents) > KEPT_DOCUMENTS:
                del self._documents[next(iter(self._documents))]  # the oldest
        return completion

    def _complete_llama(
        self,
        tokens: list[int],
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        break_loops: bool,
    ) -> tuple[Completion, list[int]]:
        """Decode with llama-cpp-python's sampler, and its GBNF grammar when given a schema;
        with the reply's tokens (those evaluated: the text may end before them)."""
        grammar = self.grammar(schema) if schema is not None else None
        processors = None
        if break_loops:
            processors = llama_cpp.LogitsProcessorList([_LoopBreaker(len(tokens))])
        ctx = self._llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        # What llama-cpp-python will reuse; llama.cpp's own count of evaluated prompt tokens
        # can include tokens evaluated before the reset (it counts them when it next syncs).
        cached = common_prefix(self._llm.input_ids[: self._llm.n_tokens].tolist(), tokens[:-1])
        start = time.perf_counter()
        try:
            out: Any = self._llm.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=self.options.seed,
                repeat_penalty=1.0,
                grammar=grammar,
                stop=list(self.format.stop),
                logits_processor=processors,
            )
        except (RuntimeError, ValueError) as err:
            raise BackendError(f"llama.cpp failed: {err}") from None
        total = time.perf_counter() - start
        perf = llama_cpp.llama_perf_context(ctx)
        choice = out["choices"][0]
        usage = Usage(
            prompt_tokens=len(tokens),
            completion_tokens=int(out["usage"]["completion_tokens"]),
            cached_tokens=cached,
        )
        reply = self._llm.input_ids[len(tokens) : self._llm.n_tokens].tolist()
        return Completion(
            text=choice["text"],
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
            usage=usage,
            prompt_seconds=perf.t_p_eval_ms / 1000,
            total_seconds=total,
            constrained=grammar is not None,
        ), reply

    def _leading_batches(self, tokens: list[int]) -> int:
        """How many of a prompt's tokens fill whole batches before its last token (which is
        evaluated with the decoding): what is saved and restored."""
        return (len(tokens) - 1) // self._llm.n_batch * self._llm.n_batch

    def _warm_start(self, tokens: list[int]) -> tuple[int, float]:
        """Have the KV cache hold the prompt's whole leading batches, restored from disk if saved.

        Only when memory holds less than one batch of the prompt (a new process, or a wholly
        different prompt): later steps of a run find their prefix in memory. The batches are
        evaluated one by one from position 0, as a cold evaluation splits them, and saved.
        Returns how many tokens were evaluated here and the seconds spent ((0, 0.0): nothing).
        """
        llm, cache = self._llm, self._prefixes
        n_batch = llm.n_batch
        top = self._leading_batches(tokens)
        if cache is None or top == 0:
            return 0, 0.0
        if common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens[:top]) >= n_batch:
            return 0, 0.0
        start = time.perf_counter()
        llm.n_tokens = 0
        for end in range(top, 0, -n_batch):
            if cache.load(tokens[:end]):
                break
        restored = llm.n_tokens
        try:
            for end in range(restored + n_batch, top + 1, n_batch):
                llm.eval(tokens[llm.n_tokens : end])
                cache.save(tokens[:end])
        except (RuntimeError, ValueError) as err:
            raise BackendError(f"llama.cpp failed: {err}") from None
        return top - restored, time.perf_counter() - start

    @property
    def guided(self) -> GuidedDecoder:
        """The llguidance decoder for this model, built on first use."""
        if self._guided is None:
            self._guided = GuidedDecoder(self._llm)
            self._guided.seed(self.options.seed)
        return self._guided

    def _complete_guided(
        self,
        tokens: list[int],
        schema: dict[str, Any],
        max_tokens: int,
        temperature: float,
        break_loops: bool,
        *,
        document: bool = False,
    ) -> tuple[Completion, list[int]]:
        """Decode with llguidance, with the reply's tokens; BackendError rather than ever
        returning unconstrained text. A `document` has no think block before it, and ends
        where it goes round in a loop."""
        start = time.perf_counter()
        think = None if document else self.think
        decoded = self.guided.decode(
            tokens,
            self.guided.matcher(schema, think),
            max_tokens=max_tokens + (think.reserve if think is not None else 0),
            temperature=temperature,
            break_loops=break_loops,
            stop_loops=document,
        )
        return Completion(
            text=decoded.text,
            finish_reason="stop" if decoded.finished else "length",
            usage=Usage(
                prompt_tokens=len(tokens),
                completion_tokens=len(decoded.tokens),
                cached_tokens=decoded.cached_tokens,
            ),
            prompt_seconds=decoded.prompt_seconds,
            total_seconds=time.perf_counter() - start,
            constrained=True,
            logprob=decoded.logprob,
        ), decoded.tokens
