"""``EngineProtocol`` over TensorRT-LLM's LLM API with StreamingLLM (extra ``trtllm``).

NEVER RUN: this adapter was written against TensorRT-LLM's documentation and
sources without a GPU or the package; its own logic is unit-tested up to the
calls into ``tensorrt_llm`` (see docs/trtllm.md).

Start-up, in order, each failing with one clear error:
1. the installed TensorRT-LLM release is one that still has StreamingLLM
   (``trtllm_versions``), else we would serve sink-less window attention;
2. the model folder is a transformers-4.x-format checkpoint, or an engine built
   with the ``streamingllm`` plugin (``trtllm_config.inspect_checkpoint``);
3. the process sees ``tp_size`` GPUs (MPI ranks are spawned on this node and
   inherit ``CUDA_VISIBLE_DEVICES``);
4. ``LLM(model, tensor_parallel_size, kv_cache_config=KvCacheConfig(
   max_attention_window=[sinks+window], sink_token_length=sinks),
   build_config=BuildConfig(... plugin_config.streamingllm=True))`` builds or
   loads the engine (minutes on first use).

A turn resubmits the conversation's stream trimmed to sinks + window plus the
new turn (``resubmit``): the LLM API keeps no cache between calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

from swiftinfer_core.backends.reply import ReplyAssembler
from swiftinfer_core.backends.resubmit import close_round, round_prompt
from swiftinfer_core.backends.trtllm_config import (
    TrtllmOptions, build_kwargs, engine_limits, fit_fields, inspect_checkpoint, kv_cache_kwargs,
    llm_kwargs, sampling_kwargs, stream_layout,
)
from swiftinfer_core.backends.trtllm_versions import TrtllmApi, TrtllmUnavailableError, load_api
from swiftinfer_core.config import Device, EngineConfig, SamplingParams
from swiftinfer_core.conversation.chat_format import ChatFormat, validate_messages
from swiftinfer_core.conversation.stream import Conversation
from swiftinfer_core.errors import (
    EngineClosedError, InvalidRequestError, PromptTooLongError, SessionBusyError, SessionNotFoundError,
)
from swiftinfer_core.model.catalog import resolve_model
from swiftinfer_core.protocol import EngineStats, RawPrompt, SessionRecord, SessionStats, SessionView, StreamChunk, ToolPrompt, Usage
from swiftinfer_core.protocol import EngineProtocol
from swiftinfer_core.session_id import check_session_id

log = logging.getLogger(__name__)


def check_gpus(tp_size: int, visible: int) -> None:
    if visible < tp_size:
        raise TrtllmUnavailableError(
            f"tensor_parallel_size={tp_size} but this process sees {visible} GPU(s). TensorRT-LLM spawns its MPI "
            "ranks on this node and they inherit CUDA_VISIBLE_DEVICES, so the Serve replica actor itself must hold "
            f"all {tp_size} GPUs: ray_actor_options num_gpus={tp_size} (one placement-group bundle "
            f"{{'CPU': c, 'GPU': {tp_size}}}), not one GPU per bundle (docs/trtllm.md)."
        )


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


class TrtllmEngine(EngineProtocol):
    def __init__(
        self,
        config: EngineConfig | None = None,
        options: TrtllmOptions | None = None,
        api_loader: Callable[[], TrtllmApi] = load_api,
        visible_gpus: Callable[[], int] = _visible_gpus,
    ):
        self.config = config or EngineConfig()
        self.options = options or TrtllmOptions()
        if self.config.device is Device.CPU:
            raise InvalidRequestError("the TensorRT-LLM backend runs on CUDA GPUs only (engine.device must be 'cuda' or 'auto')")
        self.api = api_loader()  # version gate before anything heavy
        ckpt = inspect_checkpoint(resolve_model(self.config.model))
        self.layout = stream_layout(self.config, ckpt)
        self.limits = engine_limits(self.config, self.options, self.layout)
        check_gpus(self.config.tp_size, visible_gpus())
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.options.tokenizer or str(ckpt.path))
        self.format = ChatFormat(tokenizer, self.config.allow_control_tokens_in_content, self.config.max_turn_tokens, self.config.chat_template)
        eos = ckpt.eos_ids or ((self.format.tok.eos_token_id,) if self.format.tok.eos_token_id is not None else ())
        self.eos_ids: tuple[int, ...] = tuple(eos)
        self.sessions: dict[str, Conversation] = {}
        self._active: dict[str, object] = {}  # session id -> TensorRT-LLM request in flight
        self._closed = False
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        log.info("TensorRT-LLM %s (%s): sinks=%d window=%d tp=%d", self.api.version, self.api.generation.label,
                 self.layout.sinks, self.layout.window, self.config.tp_size)
        self._llm = self._make_llm(ckpt)

    def _make_llm(self, ckpt):
        build = self.api.BuildConfig(**build_kwargs(self.limits))
        build.plugin_config.streamingllm = True
        kv = self.api.KvCacheConfig(**kv_cache_kwargs(self.config, self.layout))
        return self.api.LLM(**llm_kwargs(self.config, self.options, ckpt), kv_cache_config=kv, build_config=build)

    # ---- streaming ----

    def _begin(self, session_id: str, messages: list[dict], params: SamplingParams) -> tuple[Conversation, list[int]]:
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        check_session_id(session_id)
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        if isinstance(messages, RawPrompt):
            raise InvalidRequestError("prompt: token-id prompts (/v1/completions) are unsupported by the TensorRT-LLM backend")
        if isinstance(messages, ToolPrompt):
            raise InvalidRequestError("tools: tools shown through the chat template are unsupported by the TensorRT-LLM backend")
        messages = validate_messages(messages)
        if session_id in self._active:
            raise SessionBusyError(f"session {session_id!r} already has a turn in flight")
        session = self.sessions.get(session_id)
        fresh = session is None or session.fresh
        new_ids = self.format.first_round(messages) if fresh else self.format.next_round(messages)
        if len(new_ids) > self.config.max_turn_tokens:
            raise PromptTooLongError(f"the new messages are {len(new_ids)} tokens; the limit is {self.config.max_turn_tokens}")
        if session is None:
            session = self.sessions[session_id] = Conversation(session_id, self.layout)
        return session, new_ids

    def _sampling(self, params: SamplingParams, max_tokens: int):
        cls = self.api.SamplingParams
        return cls(**fit_fields(cls, sampling_kwargs(params, max_tokens, self.eos_ids)))

    def _after_reply(self, last: int) -> list[int]:
        return self.format.after_reply(last, set(self.eos_ids))

    async def chat(self, session_id: str, messages: list[dict], params: SamplingParams | None = None) -> AsyncIterator[StreamChunk]:
        params = params or SamplingParams()
        session, new_ids = self._begin(session_id, messages, params)
        prompt = round_prompt(session, new_ids)
        reply = ReplyAssembler(self.format.tok, params, self.eos_ids, self.limits.reply_budget(len(prompt), params.max_tokens), len(new_ids))
        request = self._llm.generate_async(prompt, sampling_params=self._sampling(params, reply.max_tokens), streaming=True)
        self._active[session_id] = request
        session.prefilled_tokens += len(prompt)
        self.tokens_prefilled += len(prompt)
        closed, engine_finished = False, False
        try:
            async for out in request:
                for chunk in reply.take(out.outputs[0].token_ids):
                    yield chunk
                engine_finished = bool(out.finished)
                if reply.done:
                    break
            reason = reply.end_reason(engine_finished)
            self._settle(session, new_ids, reply, request, engine_finished)
            closed = True
            usage = Usage(prompt_tokens=len(new_ids), completion_tokens=len(reply.output_ids), prefilled_tokens=len(prompt), cached_tokens=0)
            yield reply.final(reason, usage)
        finally:  # consumer gone (disconnect, cancel) or engine error: keep the session consistent
            if not closed:
                self._settle(session, new_ids, reply, request, engine_finished)

    def _settle(self, session: Conversation, new_ids: list[int], reply: ReplyAssembler, request, engine_finished: bool) -> None:
        if not engine_finished and self.api.generation.can_abort:
            request.abort()  # 0.19+: free the engine's slot now (older releases run to their own stop)
        close_round(session, new_ids, reply.output_ids, self._after_reply)
        self.tokens_generated += len(reply.output_ids)
        self._active.pop(session.id, None)

    # ---- sessions and stats ----

    def _session(self, session_id: str) -> Conversation:
        s = self.sessions.get(session_id)
        if s is None:
            raise SessionNotFoundError(f"no session {session_id!r}")
        return s

    def session_stats(self, session_id: str) -> SessionStats:
        return self._session(session_id).stats()  # resident is always False: nothing is cached between rounds

    def has_session(self, session_id: str) -> bool:
        return session_id in self.sessions

    def close_session(self, session_id: str) -> None:
        self._session(session_id)
        request = self._active.pop(session_id, None)
        if request is not None and self.api.generation.can_abort:
            request.abort()
        del self.sessions[session_id]

    def session_ids(self) -> list[str]:
        return list(self.sessions)

    def export_session(self, session_id: str) -> SessionRecord:
        return self._session(session_id).record()

    def import_session(self, record: SessionRecord) -> None:
        if record.session_id in self.sessions:
            self.close_session(record.session_id)
        self.sessions[record.session_id] = Conversation.from_record(record, self.layout)

    def stats(self) -> EngineStats:
        running = len(self._active)
        return EngineStats(
            active_sessions=len(self.sessions), resident_sessions=0,
            free_slots=max(0, self.limits.max_batch_size - running), total_slots=self.limits.max_batch_size,
            running_requests=running, waiting_requests=0,
            tokens_generated=self.tokens_generated, tokens_prefilled=self.tokens_prefilled,
            evictions=sum(s.stats().evictions for s in self.sessions.values()),
        )

    def view(self, session_id: str) -> SessionView:
        s = self.sessions.get(session_id)
        return SessionView(self.stats(), s.record() if s is not None else None, False)

    async def shutdown(self) -> None:
        self._closed = True
        for request in list(self._active.values()):
            if self.api.generation.can_abort:
                request.abort()
        await asyncio.to_thread(self._llm.shutdown)
