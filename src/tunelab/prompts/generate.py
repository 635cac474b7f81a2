"""Batched greedy answers from a causal LM (left padding), for scoring many short answers quickly.

tunelab.lm.generate.Generator answers one prompt at a time (it streams); here a batch of prompts of
similar length goes through one model.generate call, which on a CPU is several times faster per
question. Only the first line of each answer is kept: the answers scored here are short.

With `grounded_passages`, each answer is constrained to a span copied from its passages or the
abstention phrase (tunelab.lm.grounded.CopyConstraint). Every answer also carries its own mean and
lowest token log-probability under the model's unconstrained distribution (a confidence signal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunelab.answers import ABSTENTION
from tunelab.errors import TunelabError
from tunelab.lm.generate import Prompt


@dataclass
class Answered:
    text: str
    seconds: float  # this question's share of its batch's wall time
    prompt_tokens: int
    new_tokens: int
    # log-probabilities of the answer's own tokens (EOS step included) under the raw logits,
    # before any constraint: their mean and their minimum
    logprob_mean: float = 0.0
    logprob_min: float = 0.0


def first_line(text: str) -> str:
    """The answer line; a lead-in ending in ':' ("The answer is:") takes the next line with it."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def answer_batch(
    generator,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    grounded_passages: Sequence[Sequence[str]] | None = None,
    abstention: str = ABSTENTION,
) -> list[Answered]:
    """Greedy answers to `prompts` (user turns of the model's chat template, or chat message lists) with a loaded
    tunelab.lm.generate.Generator; results keep the order of `prompts`.

    grounded_passages  one list of passage texts per prompt: each answer is then a span copied from
                       its prompt's passages, or `abstention` (kept whole; free answers keep their first line)
    """
    import torch

    from tunelab.lm.grounded import CopyConstraint, eos_ids

    if grounded_passages is not None and len(grounded_passages) != len(prompts):
        raise TunelabError(f"{len(grounded_passages)} passage lists for {len(prompts)} prompts", "give one list of passages per prompt")
    tokenizer, model = generator.tokenizer, generator.model
    encoded = [generator.encode(p)["input_ids"][0].tolist() for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = eos_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths batch together
    results: list[Answered | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            started = time.perf_counter()  # building the constraint is part of a grounded answer's time
            constraint = None
            if grounded_passages is not None:
                constraint = CopyConstraint(tokenizer, [grounded_passages[i] for i in batch], abstention, width, eos_token_ids=stops)
            with torch.inference_mode(), generator.autocast():
                output = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=pad,
                    prefix_allowed_tokens_fn=constraint,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            seconds = (time.perf_counter() - started) / len(batch)
            sequences = output.sequences
            logprobs = _token_logprobs(output.logits, sequences[:, width:])
            for row, i in enumerate(batch):
                new = sequences[row, width:]
                eos = tokenizer.eos_token_id
                count = int((new != pad).sum()) if pad != eos else int(len(new))
                text = tokenizer.decode(new, skip_special_tokens=True)
                text = text.strip() if constraint is not None else first_line(text)
                answer = logprobs[row, : _answer_length(new.tolist(), stops)]
                mean, low = (float(answer.mean()), float(answer.min())) if len(answer) else (0.0, 0.0)
                results[i] = Answered(text, seconds, len(encoded[i]), count, mean, low)
            if on_batch:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def _token_logprobs(logits, new):
    """(rows, steps) log-probabilities of the generated tokens under the raw (unprocessed) logits."""
    import torch

    steps = torch.stack(logits, dim=1).float()  # (rows, steps, vocab)
    return torch.log_softmax(steps, dim=-1).gather(-1, new[:, : steps.shape[1], None]).squeeze(-1)


def _answer_length(new: list[int], stops: Sequence[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence token (the rest is padding)."""
    for n, token in enumerate(new):
        if token in stops:
            return n + 1
    return len(new)
