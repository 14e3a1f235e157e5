"""``QwenVLChat`` on a tiny random Qwen3-VL (real loading and image code): data-URI images,
output that depends on the image, batches mixing images and text, refused images."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest

from handlers.base import Cancelled, ChatModel, InvalidInput
from handlers.chat import ChatRequest, QwenVLChat, load_image_from_data_uri
from tests.handlers.chat_inputs import CAPITAL, SHORT, greedy, image_message, png_data_uri
from tests.tiny.chat import tiny_qwen3_vl_dir


@pytest.fixture(scope="module")
def vl_chat() -> QwenVLChat:
    pytest.importorskip("PIL", reason="Pillow is needed for images")
    return QwenVLChat(str(tiny_qwen3_vl_dir()), "cpu", name="tiny-qwen3-vl")


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
