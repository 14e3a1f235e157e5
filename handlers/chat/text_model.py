"""Chat with a text-only causal LM (``AutoModelForCausalLM``), optionally from a GGUF file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from handlers.base import Family, InvalidInput
from handlers.chat.handler import ChatHandler, dtype_for
from handlers.chat.prompts import CHATML_TEMPLATE, content_parts, render
from handlers.chat.request import EncodedPrompt


class TextChatModel(ChatHandler):
    """Chat with a transformers causal LM (``AutoModelForCausalLM``) and its chat template.

    Loads offline only. With ``gguf_file`` in the entry, ``source`` is the folder (or repo)
    holding that GGUF file; model and tokenizer are read from it and dequantized to
    ``torch_dtype`` (``auto`` by default, see :mod:`handlers.dtype`; needs the ``gguf``
    package).
    """

    family: ClassVar[Family] = Family.CHAT
    capabilities: ClassVar[list[str]] = ["chat-completion", "text-completion"]
    default_max_batch_size: ClassVar[int] = 16

    def _load(
        self,
        load: dict[str, Any],
        torch_dtype: str | None,
        /,
        *,
        gguf_file: str | None = None,
        **_entry: Any,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if gguf_file:
            load = {**load, "gguf_file": gguf_file}
        tokenizer = AutoTokenizer.from_pretrained(self.source, **load)
        model = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=dtype_for(torch_dtype, self.device), **load
        )
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        return model, tokenizer

    def _encode(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> EncodedPrompt:
        flat = []
        for message in messages:
            texts = []
            for part in content_parts(message):
                if part.get("type") != "text":
                    raise InvalidInput(
                        f"model '{self.name}' accepts text only, not '{part.get('type')}' parts",
                        param="messages",
                    )
                texts.append(str(part.get("text", "")))
            flat.append({**message, "content": "\n".join(texts)})
        prompt = render(self.tokenizer, flat, None, add_generation_prompt, tools)
        return EncodedPrompt(self.tokenizer.encode(prompt, add_special_tokens=False))
