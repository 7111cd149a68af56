"""The engine contract: one interface that the sampler drives, whatever runs the model.

An engine extends a batch of token-id prefixes with tokens drawn from the proposal (the model at a
given temperature) and returns, for every new token, log p (temperature 1) and log q (the proposal
temperature), both float32 values computed from the same logits. Many chains and requests share one
engine, so `extend` is awaited concurrently and the engine packs whatever is pending into one batch.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from powersampling.errors import EngineError, InvalidArgument


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant", "tool"] | str
    content: str
    # An assistant turn's tool calls, as chat templates take them: [{"type": "function", "function":
    # {"name": ..., "arguments": {...}}}]. Only with tools.
    tool_calls: NotRequired[list[dict[str, Any]]]


CHAT_ROLES = ("system", "user", "assistant")
TOOL_ROLE = "tool"  # a tool's result: only in a conversation that has tools


Prompt = str | Sequence[ChatMessage] | Sequence[int]


@dataclass(frozen=True, slots=True)
class ExtendRequest:
    """Extend `prefix` (prompt and kept tokens) by at most `max_new_tokens` tokens.

    temperature 0 means greedy (log q is then reported as 0). `seed` alone decides the draws, whatever
    else shares the batch. `stop` lets an engine end early once its new text holds a stop string; the
    sampler re-checks, so this is only an optimisation.
    """

    prefix: tuple[int, ...]
    max_new_tokens: int
    temperature: float
    seed: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Extension:
    """New tokens with their float32 log p (temperature 1) and log q (proposal temperature)."""

    token_ids: tuple[int, ...]
    logp: tuple[float, ...]
    logq: tuple[float, ...]
    ended_by_eos: bool


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine tells about itself (served by the describe RPC, used in cache keys)."""

    engine: str
    model: str
    fingerprint: str
    max_context_tokens: int
    eos_token_ids: tuple[int, ...]
    device: str = "cpu"
    extra: dict[str, str] = field(default_factory=dict)


class Engine(abc.ABC):
    """Base of all engines. Subclasses implement the tokenizer side and `extend`."""

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    @abc.abstractmethod
    async def extend(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        """Extend every request; the result is in the order of `requests`."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]] = ()
    ) -> list[int]:
        """Token ids of `messages` with the model's chat template and the assistant turn opened.

        `tools` (OpenAI-style function definitions) are rendered by the template when it supports them.
        """
        raise InvalidArgument("messages", f"model {self.info.model!r} has no chat template")

    @property
    def has_chat_template(self) -> bool:
        return False

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders tool definitions and tool calls."""
        return False

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:  # noqa: B027 - optional hook: most engines load in __init__
        """Load whatever is needed; `ready` is true afterwards."""

    async def close(self) -> None:  # noqa: B027 - optional hook: nothing to release by default
        """Release the model and worker threads or processes."""

    def encode_prompt(
        self, prompt: Prompt, *, chat: bool | None = None, tools: Sequence[Mapping[str, Any]] = ()
    ) -> list[int]:
        """Token ids for a text prompt, chat messages or token ids.

        Text goes through the chat template as one user turn when the model has one, unless
        chat=False; chat=True on a model without a template is an error. `tools` (function
        definitions) need chat messages and a template that supports tools; with them, messages may
        also be tool results (role "tool") and assistant turns may carry `tool_calls`.
        """
        if tools and (isinstance(prompt, str) or not self.supports_tools):
            raise InvalidArgument(
                "tools",
                f"model {self.info.model!r} has no tool support in its chat template"
                if not self.supports_tools
                else "tools need chat messages",
            )
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidArgument("prompt", "must not be empty")
            use_chat = self.has_chat_template if chat is None else chat
            if use_chat:
                return self.apply_chat_template([{"role": "user", "content": prompt}])
            return self.tokenize(prompt)
        items = list(prompt)
        if not items:
            raise InvalidArgument("prompt", "must not be empty")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            vocab = self.vocab_size
            for t in items:
                if not 0 <= t < vocab:  # type: ignore[operator]
                    raise InvalidArgument(
                        "prompt", f"token id {t} is outside the vocabulary (0..{vocab - 1})"
                    )
            return [int(t) for t in items]  # type: ignore[arg-type, call-overload]
        messages: list[ChatMessage] = []
        for i, m in enumerate(items):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("content"), str)
                or not isinstance(m.get("role"), str)
            ):
                raise InvalidArgument(f"messages[{i}]", "each message needs a string 'role' and 'content'")
            if m["role"] not in CHAT_ROLES and not (tools and m["role"] == TOOL_ROLE):
                raise InvalidArgument(f"messages[{i}].role", f"unknown role {m['role']!r}")
            message: ChatMessage = {"role": m["role"], "content": m["content"]}
            if tools and m.get("tool_calls"):
                message["tool_calls"] = list(m["tool_calls"])
            messages.append(message)
        if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
            raise InvalidArgument("messages", "all messages are empty")
        if chat is False:
            raise InvalidArgument("messages", "chat messages need the chat template (chat=False given)")
        return self.apply_chat_template(messages, tools) if tools else self.apply_chat_template(messages)

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    def check_requests(self, requests: Sequence[ExtendRequest]) -> None:
        """Refuse a malformed request with InvalidArgument naming it (`requests[k].field`).

        Engines call this in the caller's task, before batching, so a bad request fails its own
        caller and not everyone who shares the batch.
        """
        context = self.info.max_context_tokens
        vocab = self.vocab_size
        for k, request in enumerate(requests):
            where = f"requests[{k}]"
            if not request.prefix:
                raise InvalidArgument(f"{where}.prefix", "must hold at least one token")
            if len(request.prefix) >= context:
                raise InvalidArgument(
                    f"{where}.prefix",
                    f"{len(request.prefix)} tokens leave no room in the {context}-token context",
                )
            if min(request.prefix) < 0 or max(request.prefix) >= vocab:
                raise InvalidArgument(f"{where}.prefix", f"token ids must lie in 0..{vocab - 1}")
            if request.max_new_tokens < 0:
                raise InvalidArgument(f"{where}.max_new_tokens", "must be >= 0")
            if not (math.isfinite(request.temperature) and request.temperature >= 0):
                raise InvalidArgument(f"{where}.temperature", "must be a finite number >= 0 (0 is greedy)")


@dataclass(slots=True)
class _Pending:
    request: ExtendRequest
    future: asyncio.Future[Extension]


def _resolve(future: asyncio.Future[Extension], result: Extension) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Extension], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class BatchingEngine(Engine):
    """An engine whose model runs batches synchronously on one worker thread.

    Concurrent `extend` calls (from every chain of every request) queue up; a dispatcher takes all
    that is pending, runs it as one batch on the worker thread, and resolves each caller's future.
    While a batch runs, new requests gather for the next one. A request whose caller was cancelled is
    dropped before it runs and skipped between decoding steps (see `is_cancelled`).

    Continuous batching: an engine whose `continuous` is true implements `run_continuous` instead,
    which may take requests that arrive while it runs (`admit`, between decoding steps) and hands
    each result back as soon as its row ends (`deliver`), so a finished row's caller can send its
    next request into the running batch instead of waiting for the batch's longest row.
    """

    continuous: bool = False

    def __init__(self, max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise InvalidArgument("max_batch_size", "must be at least 1")
        self.max_batch_size = max_batch_size
        self._queue: asyncio.Queue[_Pending] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)
        self._local = threading.local()
        # Requests that arrived while a continuous batch runs: appended by the event loop's thread,
        # taken by the worker thread (deque appends and pops are atomic).
        self._inbox: collections.deque[_Pending] = collections.deque()
        # Counters for tests and benchmarks (written on the worker thread only).
        self.batches_run = 0
        self.sequences_run = 0
        self.tokens_generated = 0
        self.busy_s = 0.0  # wall time spent inside extend_batch

    @abc.abstractmethod
    def extend_batch(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        """Run one batch synchronously (on the worker thread)."""

    def is_cancelled(self, index: int) -> bool:
        """Inside `extend_batch` or `run_continuous`: whether the caller of request `index` has gone away."""
        futures: list[asyncio.Future[Extension]] | None = getattr(self._local, "futures", None)
        return futures is not None and futures[index].cancelled()

    def run_continuous(self, requests: Sequence[ExtendRequest]) -> None:
        """Run `requests` (indices 0..n-1) and whatever `admit` adds; `deliver` every result.

        Called on the worker thread when `continuous` is true. Requests not delivered when it
        returns or raises fail with the error (or an EngineError).
        """
        raise NotImplementedError

    def admit(self, limit: int) -> list[tuple[int, ExtendRequest]]:
        """Inside `run_continuous`: up to `limit` requests that arrived since, with their new indices."""
        futures: list[asyncio.Future[Extension]] = self._local.futures
        admitted: list[tuple[int, ExtendRequest]] = []
        while len(admitted) < limit:
            try:
                pending = self._inbox.popleft()
            except IndexError:
                break
            if pending.future.cancelled():
                continue
            futures.append(pending.future)
            admitted.append((len(futures) - 1, pending.request))
        return admitted

    def deliver(self, index: int, result: Extension) -> None:
        """Inside `run_continuous`: hand request `index` its result now."""
        future: asyncio.Future[Extension] = self._local.futures[index]
        self.sequences_run += 1
        self.tokens_generated += len(result.token_ids)
        self._local.delivered.add(index)
        # Charge the time so far before the caller can see the result (and read busy_s).
        now = time.perf_counter()
        self.busy_s += now - self._local.busy_since
        self._local.busy_since = now
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, future, result)

    async def extend(self, requests: Sequence[ExtendRequest]) -> list[Extension]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._dispatcher = loop.create_task(self._dispatch(self._queue))
        futures: list[asyncio.Future[Extension]] = [loop.create_future() for _ in requests]
        for request, fut in zip(requests, futures, strict=True):
            self._queue.put_nowait(_Pending(request, fut))
        try:
            if len(futures) == 1:  # the sampler's usual call: skip gather's bookkeeping
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    async def _dispatch(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        carried: list[_Pending] = []  # arrived during a continuous batch but not admitted into it
        while True:
            batch = carried if carried else [await queue.get()]
            # Let every chain that is ready this turn enqueue its request before the batch is cut.
            await asyncio.sleep(0)
            while not queue.empty() and len(batch) < self.max_batch_size:
                batch.append(queue.get_nowait())
            carried = batch[self.max_batch_size :]
            batch = [p for p in batch[: self.max_batch_size] if not p.future.cancelled()]
            if not batch:
                continue
            if self.continuous:
                carried += await self._dispatch_continuous(loop, queue, batch)
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as exc:
                error = exc if isinstance(exc, EngineError) else EngineError(f"{type(exc).__name__}: {exc}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def _dispatch_continuous(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Pending], batch: list[_Pending]
    ) -> list[_Pending]:
        """Run one continuous batch, feeding arrivals to its inbox; returns those it did not take."""
        self._inbox.clear()
        job = loop.run_in_executor(self._executor, self._run_continuous, batch)
        while not job.done():
            getter = loop.create_task(queue.get())
            await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.cancel() and not getter.cancelled():
                self._inbox.append(getter.result())
        left = list(self._inbox)
        self._inbox.clear()
        return left

    def _run_continuous(self, batch: list[_Pending]) -> None:
        self._local.futures = [p.future for p in batch]
        self._local.delivered = set()
        self.batches_run += 1  # counted on entry: callers may see their results before it returns
        self._local.busy_since = time.perf_counter()
        error: BaseException | None = None
        try:
            self.run_continuous([p.request for p in batch])
        except Exception as exc:
            error = exc if isinstance(exc, EngineError) else EngineError(f"{type(exc).__name__}: {exc}")
        finally:
            futures: list[asyncio.Future[Extension]] = self._local.futures
            missing = [f for i, f in enumerate(futures) if i not in self._local.delivered]
            self._local.futures = None
            self.busy_s += time.perf_counter() - self._local.busy_since
        if missing:
            failure = error or EngineError("the engine ended a batch without a result for a request")
            assert self._loop is not None
            for future in missing:
                self._loop.call_soon_threadsafe(_fail, future, failure)

    def _run(self, batch: list[_Pending]) -> list[Extension]:
        self._local.futures = [p.future for p in batch]
        started = time.perf_counter()
        try:
            results = self.extend_batch([p.request for p in batch])
        finally:
            self._local.futures = None
            self.busy_s += time.perf_counter() - started
        self.batches_run += 1
        self.sequences_run += len(batch)
        self.tokens_generated += sum(len(r.token_ids) for r in results)
        return results

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            self._dispatcher = None
        self._queue = None
        self._executor.shutdown(wait=False, cancel_futures=True)
