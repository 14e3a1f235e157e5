"""Requests for the chat handler tests: greedy generation and image messages."""

from __future__ import annotations

import base64
import io

from handlers.base import ChatGeneration

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = [{"role": "user", "content": "hi"}]


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
