"""Turning instruction rows into input_ids and labels, with the loss on the response tokens only.

A conversation is rendered with the model's chat template piece by piece: for every assistant turn,
the text up to the start of the answer (template with add_generation_prompt) is context (label
-100), and the answer with its end-of-turn marker is what the model learns. Each piece is tokenized
on its own, exactly as at inference time, where the prompt is tokenized and the answer generated.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError

IGNORE = -100  # the label PyTorch's cross-entropy skips

# For tokenizers without a chat template (base models): plain-text turns, the answer ends with EOS.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% else %}### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Give a template-less tokenizer the plain fallback; True if it was added (it is saved with the model)."""
    if tokenizer.chat_template:
        return False
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return True


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_messages(tokenizer, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text rendered so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TunelabError(
                "the model's chat template does not render a conversation as a growing prefix, so the answer tokens cannot be found",
                'use rows in the {"text"} format, or a model whose chat template is prefix-stable (ChatML, Llama 3, ...)',
            )
        context = _tokens(tokenizer, prompt[len(done) :])
        answer = _tokens(tokenizer, full[len(prompt) :])
        ids += context + answer
        labels += [IGNORE] * len(context) + answer
        done = full
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def encode_text(tokenizer, text: str, max_length: int) -> dict[str, list[int]]:
    ids = _tokens(tokenizer, text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # so the model also learns where a text ends
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_row(tokenizer, row: dict[str, Any], max_length: int) -> dict[str, Any]:
    encoded = encode_messages(tokenizer, row["messages"], max_length) if row.get("messages") else encode_text(tokenizer, row["text"], max_length)
    encoded["length"] = len(encoded["input_ids"])
    encoded["trained_tokens"] = sum(label != IGNORE for label in encoded["labels"])
    return encoded


def _tokens(tokenizer, text: str) -> list[int]:
    # The template already wrote any BOS/special tokens as text; do not add them twice.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def full_lengths(tokenizer, rows: list[dict[str, Any]]) -> list[int]:
    """Untruncated token counts, to choose max_length from the data."""
    big = 10**9
    return [len(encode_row(tokenizer, row, big)["input_ids"]) for row in rows]


def tokenize_rows(tokenizer, rows: list[dict[str, Any]], max_length: int):
    """A datasets.Dataset of input_ids/labels/length; rows whose answer was cut off entirely are dropped.

    Returns (dataset, counts) where counts has 'truncated' and 'no_answer_left'.
    """
    import datasets

    column = "messages" if rows and "messages" in rows[0] else "text"
    raw = datasets.Dataset.from_list([{column: row[column]} for row in rows])
    encoded = raw.map(lambda row: encode_row(tokenizer, row, max_length + 1), remove_columns=[column])
    truncated = sum(length > max_length for length in encoded["length"])
    encoded = encoded.map(lambda row: _cut(row, max_length))
    kept = encoded.filter(lambda row: row["trained_tokens"] > 0)
    return kept.remove_columns("trained_tokens"), {"truncated": int(truncated), "no_answer_left": len(encoded) - len(kept)}


def _cut(row: dict[str, Any], max_length: int) -> dict[str, Any]:
    ids, labels = row["input_ids"][:max_length], row["labels"][:max_length]
    # Shifted inside the model: a label at position 0 is never predicted, so it does not count.
    trained = sum(label != IGNORE for label in labels[1:])
    return {"input_ids": ids, "labels": labels, "length": len(ids), "trained_tokens": trained}
