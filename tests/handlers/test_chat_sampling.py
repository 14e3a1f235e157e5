"""The chat handler's logprobs, penalties, vLLM sampling extensions and raw prompts, on the
tiny random Llama (real loading and decoding code), checked against plain forward passes."""

from __future__ import annotations

import pytest
import torch

from handlers.base import InvalidInput
from handlers.chat import ChatRequest, TextChatModel
from tests.handlers.chat_inputs import CAPITAL, greedy
from tests.tiny.chat import tiny_llama_chat_dir


@pytest.fixture(scope="module")
def chat() -> TextChatModel:
    return TextChatModel(str(tiny_llama_chat_dir()), "cpu", name="tiny-llama-chat")


def reference(chat: TextChatModel, ids: list[int]) -> torch.Tensor:
    """Log-softmax of a plain forward pass over ``ids``: ``[len(ids), vocab]``."""
    with torch.inference_mode():
        return torch.log_softmax(chat.model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_greedy_logprobs_are_the_models_and_stream_with_their_text(chat):
    deltas: list[tuple[str, list]] = []
    result = greedy(chat, CAPITAL, 10, logprobs=4, on_text=lambda t, e: deltas.append((t, e)))
    entries = result.logprobs
    assert len(entries) == result.completion_tokens == 10
    prompt = chat._encode(CAPITAL, add_generation_prompt=True).input_ids
    ids = list(prompt)
    for token, logprob, _raw, top in entries:
        row = reference(chat, ids)[-1]
        chosen = int(row.argmax())
        assert logprob == pytest.approx(float(row[chosen]), abs=1e-4)
        assert top[0][0] == token
        assert [lp for _, lp, _ in top] == sorted((lp for _, lp, _ in top), reverse=True)
        assert len(top) == 4
        ids.append(chosen)
    assert [e for _, batch in deltas for e in batch] == entries  # streamed == whole
    assert "".join(t for t, _ in deltas) == result.text
    plain = greedy(chat, CAPITAL, 10)
    assert plain.logprobs is None and plain.text == result.text


def test_logprobs_are_of_the_raw_logits_whatever_the_sampling(chat):
    """Temperature, penalties and bias change the choice, never the reported distribution."""
    first = greedy(chat, CAPITAL, 1, logprobs=3).logprobs[0]
    biased_token = first[3][1][0]  # the second most likely token
    bias_id = next(i for i in range(chat.vocab_size) if chat.token_bytes.text(i)[0] == biased_token)
    biased = greedy(chat, CAPITAL, 1, logprobs=3, logit_bias={bias_id: 100}).logprobs[0]
    assert biased[0] == biased_token
    assert biased[3] == first[3]  # the same top 3, same values


def test_frequency_and_presence_penalties_break_a_forced_repetition(chat):
    token = 300
    text = chat.token_bytes.text(token)[0]
    forced = greedy(chat, CAPITAL, 8, logit_bias={token: 1.0})
    assert forced.text == text * 8  # a random model's logits are nearly flat
    frequency = greedy(chat, CAPITAL, 8, logit_bias={token: 1.0}, frequency_penalty=0.5)
    assert 1 <= frequency.text.count(text) < 8
    presence = greedy(chat, CAPITAL, 8, logit_bias={token: 1.0}, presence_penalty=2.0)
    assert presence.text.startswith(text) and presence.text.count(text) == 1


def test_penalty_arithmetic():
    """OpenAI's penalties on generated counts; vLLM's repetition penalty on prompt and output."""
    from handlers.chat.sampling import Penalties

    request = ChatRequest(
        CAPITAL, 4, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0
    )
    penalties = Penalties(request, torch.device("cpu"), prompt_ids=[0, 1])
    logits = torch.tensor([2.0, -2.0, 1.0, 1.0])
    penalties.apply_(logits)
    assert logits.tolist() == [1.0, -4.0, 1.0, 1.0]  # prompt tokens 0 and 1 only
    penalties.observe(2)
    penalties.observe(2)
    logits = torch.tensor([2.0, -2.0, 1.0, 1.0])
    penalties.apply_(logits)
    assert logits.tolist() == [1.0, -4.0, 0.5 - 0.5 - 0.5, 1.0]  # 1/2, then 2 x 0.25, then 0.5


def test_top_k_1_and_min_p_1_sample_the_greedy_token(chat):
    expected = greedy(chat, CAPITAL, 8).text
    for extension in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = chat.generate(CAPITAL, max_new_tokens=8, temperature=1.5, seed=3, **extension)
        assert sampled.text == expected, extension
    wide = chat.generate(CAPITAL, max_new_tokens=8, temperature=1.5, seed=3)
    assert wide.text != expected  # without them, sampling a flat distribution differs


def test_a_raw_prompt_is_not_templated_and_can_score_its_tokens(chat):
    prompt = "The quick brown fox"
    result = greedy(chat, [], 3, prompt=prompt, logprobs=2, prompt_logprobs=True)
    ids = chat.tokenizer(prompt).input_ids
    assert result.prompt_tokens == len(ids)
    scored = result.prompt_logprobs
    assert len(scored) == len(ids) and scored[0][1] is None
    rows = reference(chat, ids)
    for position in range(1, len(ids)):
        assert scored[position][1] == pytest.approx(float(rows[position - 1][ids[position]]), 1e-4)
    assert result.logprobs[0][1] == pytest.approx(float(rows[-1].max()), abs=1e-4)
    with pytest.raises(InvalidInput):
        greedy(chat, [], 3, prompt="")


def test_out_of_range_extensions_are_invalid_input(chat):
    for bad in (
        {"presence_penalty": 3},
        {"repetition_penalty": 0},
        {"top_k": -5},
        {"min_p": 2},
        {"logprobs": 21},
    ):
        result = chat.generate_batch([ChatRequest(CAPITAL, 2, **bad)])[0]
        assert isinstance(result, InvalidInput), bad
