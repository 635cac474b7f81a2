"""Instruction data: the three row shapes, precise errors, and the label mask (loss on answers only)."""

from __future__ import annotations

import json

import pytest

from tests._lm_fixtures import write_jsonl, write_tiny_llama
from tunelab.errors import TunelabError
from tunelab.lm.data import load_instructions, prompt_of
from tunelab.lm.tokenize import IGNORE, encode_messages, encode_text, ensure_chat_template, full_lengths, tokenize_rows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(write_tiny_llama(tmp_path_factory.mktemp("tiny")))


def test_three_formats_normalise(tmp_path):
    pr = load_instructions(write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "Hi", "response": "Hello", "system": "Be brief"}]))
    assert pr.format == "prompt-response"
    assert pr.rows[0]["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert load_instructions(write_jsonl(tmp_path / "m.jsonl", [{"messages": chat}])).rows == [{"messages": chat}]
    assert load_instructions(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])).rows == [{"text": "plain"}]
    (tmp_path / "c.csv").write_text('prompt,completion\n"q1","a1"\n"q2",""\n', encoding="utf-8")
    csv = load_instructions(tmp_path / "c.csv")
    assert len(csv.rows) == 1 and csv.dropped["empty"] == 1
    (tmp_path / "w.json").write_text(json.dumps({"data": [{"messages": chat}]}), encoding="utf-8")
    assert load_instructions(tmp_path / "w.json").format == "messages"


def test_files_are_read_by_the_one_data_reader(tmp_path):
    """data.load.read_raw reads SFT data too: a ';' CSV is told by its delimiter, an answer 'None' stays
    an answer, and a broken JSONL line is named by its number (blank lines counted)."""
    (tmp_path / "semi.csv").write_text("prompt;response\nIs it snowing?;None\nCapital of France?;Paris, of course\n", encoding="utf-8")
    data = load_instructions(tmp_path / "semi.csv")
    assert data.format == "prompt-response" and data.dropped["empty"] == 0
    assert [row["messages"][-1]["content"] for row in data.rows] == ["None", "Paris, of course"]
    (tmp_path / "broken.jsonl").write_text('{"text": "one"}\n\n{"text": "two",}\n', encoding="utf-8")
    with pytest.raises(TunelabError, match=r"broken.jsonl line 3 is not valid JSON"):
        load_instructions(tmp_path / "broken.jsonl")


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"promt": "a", "response": "b"}\n', "did you mean 'prompt'"),
        ('{"prompt": "a", "response": "b"}\n{broken\n', "line 2 is not valid JSON"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}\n', "role 'wizard'"),
        ('{"messages": [{"content": "x"}]}\n', "needs 'role' and 'content'"),
        ('{"prompt": "a", "response": "b"}\n{"text": "c"}\n', "row 2 has no 'prompt'"),
    ],
)
def test_mistakes_are_named(tmp_path, content, needle):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TunelabError, match=needle):
        load_instructions(path)


def test_unsupported_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(TunelabError, match="unsupported file type"):
        load_instructions(tmp_path / "d.xml")
    with pytest.raises(TunelabError, match="does not exist"):
        load_instructions(tmp_path / "nope.jsonl")


def test_label_mask_covers_only_the_answers(tokenizer):
    messages = [
        {"role": "user", "content": "What colour is sky?"},
        {"role": "assistant", "content": "The sky is blue."},
        {"role": "user", "content": "What colour is snow?"},
        {"role": "assistant", "content": "The snow is white."},
    ]
    encoded = encode_messages(tokenizer, messages, 1000)
    ids, labels = encoded["input_ids"], encoded["labels"]
    # The ids are exactly the rendered conversation.
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    # Labels are the ids where trained, -100 elsewhere; the trained text is the two answers with their end markers.
    assert all(label in (IGNORE, i) for i, label in zip(ids, labels))
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert trained == "The sky is blue.<|im_end|>\nThe snow is white.<|im_end|>\n"
    assert "What colour" not in trained and "user" not in trained


def test_text_rows_train_on_everything_and_end_with_eos(tokenizer):
    encoded = encode_text(tokenizer, "The sky is blue.", 1000)
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id


def test_truncation_drops_rows_whose_answer_is_cut_off(tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": "What colour is sky? " * 5}, {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The sky is blue."}]},
    ]
    long, short = full_lengths(tokenizer, rows)
    assert short < long
    dataset, counts = tokenize_rows(tokenizer, rows, max_length=short)  # the long one loses its whole answer
    assert counts == {"truncated": 1, "no_answer_left": 1}
    assert dataset["length"] == [short]


def test_fallback_template_for_base_models(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_llama(tmp_path / "base", chat_template=None))
    assert ensure_chat_template(tokenizer) is True
    encoded = encode_messages(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], 1000)
    trained = tokenizer.decode([i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE])
    assert trained.startswith("Hello") and tokenizer.eos_token in trained


def test_prompt_of_gives_the_context_and_the_reference():
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert prompt_of(row) == ([{"role": "user", "content": "q"}], "a")
    prompt, rest = prompt_of({"text": "one two three four"})
    assert prompt + rest == "one two three four" and prompt
