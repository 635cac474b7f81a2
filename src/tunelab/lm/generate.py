"""Text generation from a causal LM: greedy by default (reproducible), sampling on request, streaming.

gen = Generator("runs/my-sft")                      # a run, model folder, adapter or catalogue name
gen("What is LoRA?")                                # -> str
for piece in gen.stream([{"role": "user", "content": "Hi"}]):
    print(piece, end="")
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

Prompt = str | list[dict[str, str]]


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def of(cls, stop: Sequence[str] | None = None, **fields: Any) -> Sampling:
        """From keywords as callers write them: `stop` as a list, the other fields by name."""
        return cls(stop=tuple(stop or ()), **fields)

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise TunelabError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})", "ask for 1 or more tokens")
        if self.temperature < 0:
            raise TunelabError(f"temperature must be >= 0 (got {self.temperature})", "use 0 for greedy decoding, e.g. 0.7 to sample")
        if not 0 < self.top_p <= 1:
            raise TunelabError(f"top_p must be in (0, 1] (got {self.top_p})", "e.g. 0.9")


class Generator:
    """A causal LM loaded once; call it with a prompt string or a list of chat messages."""

    def __init__(self, model: str | os.PathLike | None = None, *, precision: str = "fp32", threads: int | None = None, loaded: tuple[Any, Any] | None = None):
        from tunelab import hardware
        from tunelab.lm.load import load_lm, resolve_lm

        if threads is not None or loaded is None:
            hardware.set_threads(threads)
        if loaded is not None:
            self.model, self.tokenizer = loaded
            self.name = getattr(self.model.config, "name_or_path", "model") or "model"
        else:
            if model is None:
                raise TypeError("Generator needs a model (name or folder) or loaded=(model, tokenizer)")
            source = resolve_lm(model)
            self.model, self.tokenizer = load_lm(source)
            self.name = source.name
        self.precision = hardware.resolve_precision(precision)
        self._lock = threading.Lock()  # one generation at a time: they would only fight for the cores

    # prompts -------------------------------------------------------------------------------
    def encode(self, prompt: Prompt, system: str | None = None):
        """Model inputs for a prompt: chat messages go through the chat template; a string is a user
        turn for chat models and raw text to continue for models without a template."""
        if isinstance(prompt, str) and not self.tokenizer.chat_template:
            return self.tokenizer(prompt, return_tensors="pt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        if not messages:
            raise TunelabError("no messages to answer", "send at least one user message")
        if not self.tokenizer.chat_template:
            from tunelab.lm.tokenize import FALLBACK_TEMPLATE

            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=FALLBACK_TEMPLATE)
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def count_tokens(self, prompt: Prompt) -> int:
        return int(self.encode(prompt)["input_ids"].shape[1])

    # generation ----------------------------------------------------------------------------
    def __call__(self, prompt: Prompt, system: str | None = None, **sampling: Any) -> str:
        """The whole answer at once; `sampling`: Sampling's fields by name (max_new_tokens, temperature, top_p, stop, seed)."""
        return self.complete(prompt, Sampling.of(**sampling), system).text

    def complete(self, prompt: Prompt, sampling: Sampling = Sampling(), system: str | None = None) -> Completion:
        stream = self.stream(prompt, sampling=sampling, system=system)
        for _ in stream:
            pass
        return stream.completion

    def stream(self, prompt: Prompt, system: str | None = None, sampling: Sampling | None = None, **fields: Any) -> TextStream:
        """An iterator over text pieces as they are generated; `.completion` is set once it is exhausted.
        The sampling is `sampling`, or Sampling's fields by name as `__call__` takes them."""
        sampling = sampling or Sampling.of(**fields)
        sampling.check()
        inputs = self.encode(prompt, system)
        limit = context_limit(self.model)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + sampling.max_new_tokens > limit:
            raise TunelabError(
                f"the prompt ({prompt_tokens} tokens) plus max_new_tokens ({sampling.max_new_tokens}) exceed the model's context of {limit} tokens",
                "shorten the prompt or the conversation, or ask for fewer new tokens",
            )
        return TextStream(self, inputs, sampling)

    def chat(self, system: str | None = None) -> ChatSession:
        return ChatSession(self, system)

    def autocast(self):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()


class TextStream:
    """Runs model.generate on a worker thread and yields decoded text as TextIteratorStreamer delivers it.

    Stop strings are cut off (with the text after them), as OpenAI does; closing the stream early
    stops the generation at the next token.
    """

    def __init__(self, generator: Generator, inputs, sampling: Sampling):
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.generator, self.sampling = generator, sampling
        self.prompt_tokens = int(inputs["input_ids"].shape[1])
        self.completion: Completion | None = None
        self._cancel = threading.Event()
        self._output = None
        self._error: BaseException | None = None
        self._streamer = TextIteratorStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        cancel = self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        kwargs: dict[str, Any] = dict(inputs)
        kwargs.update(
            streamer=self._streamer,
            max_new_tokens=sampling.max_new_tokens,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            pad_token_id=generator.tokenizer.pad_token_id,
        )
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        self._kwargs = kwargs
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._pieces = self._pieces_until_stop()

    def _run(self) -> None:
        import torch

        gen = self.generator
        try:
            with gen._lock, torch.no_grad(), gen.autocast():
                if self.sampling.seed is not None:
                    torch.manual_seed(self.sampling.seed)
                self._output = gen.model.generate(**self._kwargs)
        except BaseException as error:  # handed to the reading thread
            self._error = error
            self._streamer.end()

    def _pieces_until_stop(self) -> Iterator[str]:
        stops = [s for s in self.sampling.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # text held back: it may be the start of a stop string
        text, sent, stopped = "", 0, False
        for piece in self._streamer:
            text += piece
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if cut > sent:
                    yield text[sent:cut]
                text, stopped = text[:cut], True
                self._cancel.set()
                break
            ready = len(text) - hold
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        if not stopped and len(text) > sent:
            yield text[sent:]
        self._finish(text, stopped)

    def _finish(self, text: str, stopped: bool) -> None:
        if stopped:
            for _ in self._streamer:  # drain what was generated before the cancel took effect
                pass
        self._thread.join()
        if self._error is not None:
            raise self._error
        new = self._output[0, self.prompt_tokens :] if self._output is not None else []
        eos = _eos_ids(self.generator)
        ended = len(new) > 0 and int(new[-1]) in eos
        finish = "stop" if stopped or ended or len(new) < self.sampling.max_new_tokens else "length"
        self.completion = Completion(text, self.prompt_tokens, len(new), finish, time.perf_counter() - self._started)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating (e.g. the client went away)."""
        self._cancel.set()
        self._pieces.close()
        self._thread.join()


class ChatSession:
    """A conversation that remembers its turns; send() streams the reply and then records it."""

    def __init__(self, generator: Generator, system: str | None = None):
        self.generator = generator
        self.history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def send(self, text: str, **sampling: Any) -> Iterator[str]:
        messages = self.history + [{"role": "user", "content": text}]
        stream = self.generator.stream(messages, **sampling)
        reply = ""
        for piece in stream:
            reply += piece
            yield piece
        self.history = messages + [{"role": "assistant", "content": reply}]

    def reset(self) -> None:
        self.history = [m for m in self.history if m["role"] == "system"]


def _eos_ids(generator: Generator) -> set[int]:
    eos = generator.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if generator.tokenizer.eos_token_id is not None:
        ids.add(generator.tokenizer.eos_token_id)
    return ids


def context_limit(model) -> int:
    from tunelab.lm.load import context_limit as limit

    return limit(model)


def generate_samples(model, tokenizer, prompts: list, max_new_tokens: int, precision: str = "fp32") -> list[str]:
    """Greedy answers for a few prompts with an in-memory model (the before/after samples of sft)."""
    generator = Generator(loaded=(model, tokenizer), precision=precision)
    was_training = model.training
    model.eval()
    try:
        return [generator(prompt, max_new_tokens=max_new_tokens) for prompt in prompts]
    finally:
        model.train(was_training)
