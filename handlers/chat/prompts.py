"""Chat templates and message content: how OpenAI messages become a prompt string."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from handlers.base import InvalidInput

# Used when a tokenizer ships no chat template (ChatML, as Qwen and SmolLM use).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# ChatML with Qwen-VL image placeholders, for VL checkpoints without a chat template.
CHATML_VL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def render(
    tokenizer,
    messages: list[dict[str, Any]],
    template: str | None,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text of ``messages`` (a template error is the client's: a 400)."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja raise_exception(...) in templates: bad role order etc.
        raise InvalidInput(f"could not apply the chat template: {exc}", param="messages") from exc


def content_parts(message: Any) -> list[dict[str, Any]]:
    """OpenAI message content as a list of parts (a string becomes one text part)."""
    if not isinstance(message, dict) or "role" not in message:
        raise InvalidInput("each message needs a role", param="messages")
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise InvalidInput("message content must be a string or a list of parts", param="messages")


def processor_chat_template(source: str, load: dict[str, Any]) -> str | None:
    """A chat template saved beside the processor (``chat_template.jinja`` / ``.json``)."""
    from transformers.utils import cached_file

    options = {**load, "_raise_exceptions_for_missing_entries": False}
    for filename in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, filename, **options)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if filename.endswith(".json") else text
    return None
