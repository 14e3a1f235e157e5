"""Chat ``logprobs``/``top_logprobs``, ``n``, penalties and the sampling extensions, and the
refusal of unknown fields, through the whole stack with the official openai client on the real
SmolLM2; logprobs are checked against an in-process transformers reference."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import SMOL
from tests.smol_reference import chat_ids, greedy, smollm2

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
REPEAT = [{"role": "user", "content": "Write the word 'hello' twenty times, separated by spaces."}]


@pytest.fixture(scope="module")
def client(smol_stack, openai_client):
    # several rows of a 135M model on a shared, loaded CPU can take minutes
    return openai_client.with_options(timeout=600)


@pytest.fixture(scope="module")
def greedy_logprobs(client):
    return client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=20, logprobs=True, top_logprobs=5
    )


def stop_ids() -> set[int]:
    tokenizer, _ = smollm2()
    return {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}


def test_logprobs_sum_to_the_sequence_log_probability(greedy_logprobs):
    choice = greedy_logprobs.choices[0]
    content = choice.logprobs.content
    assert "Paris" in choice.message.content
    assert len(content) == greedy_logprobs.usage.completion_tokens - (
        choice.finish_reason == "stop"
    )  # the end-of-turn token is not part of the content
    assert "".join(t.token for t in content) == choice.message.content
    assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
    tokenizer, _ = smollm2()
    reference = greedy(chat_ids(CAPITAL), 20, stop_ids())
    assert tokenizer.decode([t for t, _ in reference]) == choice.message.content
    assert len(reference) == len(content)
    for entry, (_, logprob) in zip(content, reference, strict=True):
        assert entry.logprob == pytest.approx(logprob, abs=2e-3)
    total = sum(t.logprob for t in content)
    assert total == pytest.approx(sum(lp for _, lp in reference), abs=1e-2)
    assert total < 0


def test_top_logprobs_are_sorted_and_hold_the_greedy_choice(greedy_logprobs):
    for entry in greedy_logprobs.choices[0].logprobs.content:
        top = entry.top_logprobs
        assert len(top) == 5
        values = [t.logprob for t in top]
        assert values == sorted(values, reverse=True)
        assert top[0].token == entry.token  # temperature 0: the most likely token
        assert top[0].logprob == pytest.approx(entry.logprob)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        assert all(bytes(t.bytes).decode(errors="replace") for t in top)


def test_streamed_logprobs_equal_the_whole_answers(client, greedy_logprobs):
    chunks = list(
        client.chat.completions.create(
            model=SMOL,
            messages=CAPITAL,
            temperature=0,
            max_tokens=20,
            logprobs=True,
            top_logprobs=5,
            stream=True,
        )
    )
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    whole = greedy_logprobs.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in whole]
    for a, b in zip(streamed, whole, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
    # each chunk carries the logprobs of its own text
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].delta.content:
            text = "".join(e.token for e in chunk.choices[0].logprobs.content)
            assert text == chunk.choices[0].delta.content


def test_no_logprobs_unless_asked_and_top_logprobs_needs_them(client):
    plain = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=3
    )
    assert plain.choices[0].logprobs is None
    only_chosen = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=3, logprobs=True
    )
    assert [e.top_logprobs for e in only_chosen.choices[0].logprobs.content] == [[]] * 3
    for bad in ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=SMOL, messages=CAPITAL, max_tokens=3, **bad)
        assert err.value.body["param"] == "top_logprobs"


def test_n_at_temperature_0_gives_equal_choices_and_counts_the_prompt_once(client):
    one = client.chat.completions.create(model=SMOL, messages=CAPITAL, temperature=0, max_tokens=12)
    three = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=12, n=3
    )
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_n_with_a_seed_differs_per_choice_and_is_reproducible(client):
    story = [{"role": "user", "content": "Write a sentence about a cat."}]

    def sample(n: int):
        answer = client.chat.completions.create(
            model=SMOL, messages=story, temperature=1.0, top_p=1.0, max_tokens=8, n=n, seed=7
        )
        return [c.message.content for c in answer.choices]

    first = sample(3)
    assert len(set(first)) >= 2, first  # per-choice seeds: not three copies
    assert sample(3) == first  # the same seed: the same choices
    assert sample(1) == first[:1]  # choice 0 uses the request's seed itself


def test_n_streams_each_choice_with_its_index(client):
    whole = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=10, n=2
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=10, n=2, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}


def test_frequency_and_presence_penalties_change_a_repetitive_answer(client):
    def answer(**extra) -> str:
        return (
            client.chat.completions.create(
                model=SMOL, messages=REPEAT, temperature=0, max_tokens=24, **extra
            )
            .choices[0]
            .message.content
        )

    plain = answer()
    assert plain.lower().count("hello") >= 4, plain  # the greedy answer repeats
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalized = answer(**penalty)
        assert penalized != plain
        assert penalized.lower().count("hello") < plain.lower().count("hello"), penalized
    assert answer(frequency_penalty=0.0) == plain
    repeated = answer(extra_body={"repetition_penalty": 1.8})
    assert repeated.lower().count("hello") < plain.lower().count("hello"), repeated


def test_vllm_top_k_and_min_p_are_served(client):
    greedy_text = (
        client.chat.completions.create(model=SMOL, messages=CAPITAL, temperature=0, max_tokens=12)
        .choices[0]
        .message.content
    )
    for extension in ({"top_k": 1}, {"min_p": 1.0}):  # both keep only the most likely token
        sampled = client.chat.completions.create(
            model=SMOL, messages=CAPITAL, temperature=1.5, max_tokens=12, extra_body=extension
        )
        assert sampled.choices[0].message.content == greedy_text, extension


def test_unknown_fields_are_refused_by_name_and_documented_ones_accepted(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=SMOL, messages=CAPITAL, max_tokens=2, extra_body={"frobnicate": 1}
        )
    assert err.value.body["param"] == "frobnicate"
    assert "Unrecognized request argument supplied: frobnicate" in err.value.body["message"]
    for refused in ({"reasoning_effort": "low"}, {"modalities": ["text", "audio"]}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=SMOL, messages=CAPITAL, max_tokens=2, **refused)
        assert err.value.body["param"] == next(iter(refused))
    accepted = client.chat.completions.create(
        model=SMOL,
        messages=CAPITAL,
        max_tokens=2,
        temperature=0,
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        user="someone",
        modalities=["text"],
        stream_options=None,
    )
    assert accepted.choices[0].message.content


def test_streams_send_no_event_ids_so_keep_alives_parse(smol_stack):
    """The openai client keeps the last ``id:`` and turns each later ``: ping`` keep-alive
    into an empty event it cannot parse: OpenAI-compatible streams carry no ids."""
    import httpx
    from openai._streaming import SSEDecoder

    body = {"model": SMOL, "messages": CAPITAL, "max_tokens": 3, "temperature": 0, "n": 2}
    url = f"{smol_stack.v1}/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=600) as response:
        raw = response.read()
    assert not [line for line in raw.splitlines() if line.startswith(b"id:")]
    events = list(SSEDecoder().iter_bytes(iter([raw.replace(b"\n\n", b"\n\n: ping\n\n", 1)])))
    assert all(e.data for e in events)
