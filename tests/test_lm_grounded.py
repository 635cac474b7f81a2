"""Grounded decoding: answers are spans copied from the passages or the abstention phrase, the
constraint's token rules on a hand-built case, EOS never first, and the answers' log-probabilities."""

from __future__ import annotations

import pytest

from tests._lm_fixtures import write_tiny_llama
from tunelab.answers import ABSTENTION
from tunelab.lm.generate import Generator
from tunelab.lm.grounded import CopyConstraint, eos_ids, is_copied
from tunelab.prompts.generate import answer_batch

PASSAGES = [
    ["The sky is blue.", "Paris is the capital of France.\nIt has 2 million people."],
    ["Snow is white and coal is black.", "The grass is green, the sun is yellow; blood is red."],
    [],  # nothing retrieved: only the abstention phrase is allowed
    ["What colour is a plum? A plum is purple.", "count 1 2 3 4 5 6, hello world"],
    ["N'Djamena is the capital of Chad (population 1,500,000)."],
]
PROMPTS = [
    "What colour is sky?",
    "What colour is the grass on a summer day? Answer in a few words, please.",
    "Hi",
    "What is my name?",
    "What colour is plum?",
]


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    return [Generator(write_tiny_llama(tmp_path_factory.mktemp(f"tiny-llama-{seed}"), seed=seed), precision="fp32") for seed in range(4)]


def test_grounded_answers_are_copied_spans_and_free_ones_are_not(generators):
    free_copied = []
    for gen in generators:
        for batch_size in (3, 5):  # 3: a batch of three different passage lists and prompt lengths (left padding)
            answers = answer_batch(gen, PROMPTS, max_new_tokens=16, batch_size=batch_size, grounded_passages=PASSAGES)
            assert len(answers) == len(PROMPTS)
            for answer, passages in zip(answers, PASSAGES):
                assert is_copied(answer.text, passages), (answer.text, passages)
                assert 2 <= answer.new_tokens <= 16
            assert answers[2].text == ABSTENTION
            # Rotated passages: the same prompts grounded in other rows' passages.
            rotated = PASSAGES[1:] + PASSAGES[:1]
            for answer, passages in zip(answer_batch(gen, PROMPTS, max_new_tokens=16, batch_size=batch_size, grounded_passages=rotated), rotated):
                assert is_copied(answer.text, passages), (answer.text, passages)
        free = answer_batch(gen, PROMPTS, max_new_tokens=16, batch_size=3)
        free_copied += [is_copied(a.text, p) for a, p in zip(free, PASSAGES)]
    assert not all(free_copied)  # a random model babbles: the check above could fail


def test_constraint_rules_on_a_hand_built_case(generators):
    tok = generators[0].tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    the, sky, is_, blue, dot = ids("The sky is blue.")
    assert tok.convert_ids_to_tokens([sky, is_, blue]) == ["Ġsky", "Ġis", "Ġblue"]
    bare_is = tok.convert_tokens_to_ids("is")  # the no-leading-space form of "Ġis"
    p, a, r, is_end, is2 = ids("Paris is")
    assert is_end == bare_is and is2 == is_
    abstain = ids(ABSTENTION)
    eos = eos_ids(tok)
    c = CopyConstraint(tok, [["The sky is blue.", "Paris is"], []], ABSTENTION, prompt_length=[3, 1], eos_token_ids=eos)

    # First token: word starts of the passages, "is" for "Ġis", the abstention's first token; no EOS,
    # no mid-word token ("a", "r") and no "." (not a word start).
    assert set(c.allowed(0, [])) == {the, sky, is_, blue, bare_is, p, abstain[0]}
    assert set(c.allowed(1, [])) == {abstain[0]}
    # Continuations, and EOS only at word ends.
    assert set(c.allowed(0, [the])) == {sky} | set(eos)
    assert set(c.allowed(0, [sky, is_])) == {blue} | set(eos)
    assert set(c.allowed(0, [bare_is])) == {blue} | set(eos)  # "is" continues both passages; "Paris is" ends there
    assert set(c.allowed(0, [blue])) == {dot} | set(eos)
    assert set(c.allowed(0, [blue, dot])) == set(eos)
    assert c.allowed(0, [p]) == [a]  # "P" alone is not a word
    assert c.allowed(0, [p, a, r]) == [is_end]
    # The abstention phrase token by token, then EOS; a partial phrase cannot end.
    for n in range(1, len(abstain)):
        assert abstain[n] in c.allowed(1, abstain[:n]) and not set(eos) & set(c.allowed(1, abstain[:n]))
    assert c.allowed(1, abstain) == eos
    # Nothing continues an impossible prefix (or a finished row): only EOS.
    assert c.allowed(0, [dot]) == eos and c.allowed(0, [the, eos[0], 0]) == eos
    # As prefix_allowed_tokens_fn: the generated tokens start after each row's prompt length.
    torch = pytest.importorskip("torch")
    assert c(0, torch.tensor([7, 7, 7, sky, is_])) == c.allowed(0, [sky, is_])
    assert c(1, torch.tensor([7, *abstain[:2]])) == c.allowed(1, abstain[:2])
    # whole_words=False: any token starts, and any span ends.
    loose = CopyConstraint(tok, [["Paris is"]], ABSTENTION, 0, eos_token_ids=eos, whole_words=False)
    assert {a, r} <= set(loose.allowed(0, [])) and set(eos) <= set(loose.allowed(0, [p]))


def test_eos_is_never_allowed_first(generators):
    tok = generators[0].tokenizer
    eos = set(eos_ids(tok, generators[0].model))
    for whole_words in (True, False):
        c = CopyConstraint(tok, PASSAGES + [[" ", "."]], ABSTENTION, 0, whole_words=whole_words)
        for row in range(len(PASSAGES) + 1):
            first = set(c.allowed(row, []))
            assert first and not first & eos


def test_logprobs_match_a_plain_forward_pass(generators):
    import torch

    gen = generators[0]
    prompt = "What colour is sky?"
    (answered,) = answer_batch(gen, [prompt], max_new_tokens=10)
    inputs = gen.encode(prompt)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        ids = gen.model.generate(**inputs, max_new_tokens=10, do_sample=False)
        new = ids[0, width:].tolist()
        eos = eos_ids(gen.tokenizer, gen.model)
        new = new[: next((n + 1 for n, t in enumerate(new) if t in eos), len(new))]
        full = torch.tensor([inputs["input_ids"][0].tolist() + new])
        logits = gen.model(full).logits[0, width - 1 : width - 1 + len(new)]
    token_logprobs = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(new)), torch.tensor(new)]
    assert answered.new_tokens == len(new)
    assert answered.logprob_mean == pytest.approx(float(token_logprobs.mean()), abs=1e-4)
    assert answered.logprob_min == pytest.approx(float(token_logprobs.min()), abs=1e-4)
    assert answered.logprob_min <= answered.logprob_mean < 0


def test_is_copied():
    passages = ["Paris is the capital\nof France.", "Snow is white."]
    assert is_copied("the capital of France", passages)
    assert is_copied("  Snow is  white. ", passages)
    assert is_copied("I don't know", passages) and is_copied("Nope", [], abstention="Nope")
    assert not is_copied("The capital of France", passages)  # case-sensitive
    assert not is_copied("Paris is in France", passages)
    assert not is_copied("", passages) and not is_copied("I don't", passages)


def test_passage_lists_must_match_the_prompts(generators):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="2 passage lists for 1 prompts"):
        answer_batch(generators[0], ["Hi"], grounded_passages=[["a"], ["b"]])
