"""Vision-language chat for Qwen-VL models: image placeholders, pixel values, M-RoPE positions."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from handlers.base import Family, InvalidInput
from handlers.chat.handler import ChatHandler, dtype_for
from handlers.chat.images import load_image_from_data_uri
from handlers.chat.prompts import (
    CHATML_VL_TEMPLATE,
    content_parts,
    processor_chat_template,
    render,
)
from handlers.chat.request import EncodedPrompt


class QwenVLChat(ChatHandler):
    """Vision-language chat for Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

    Message content may be a string or a list of ``{"type": "text", "text": ...}`` and
    ``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}`` parts. Only
    data URIs are accepted (the worker turns remote URLs into data URIs by its own policy).

    Inputs are prepared with the tokenizer and the image processor directly rather than
    ``AutoProcessor``: the Qwen-VL processors also construct a video processor, which needs
    torchvision; images alone do not. The image placeholder is expanded exactly as the
    processor does (``grid_t*grid_h*grid_w / merge_size**2`` image tokens per image).
    """

    family: ClassVar[Family] = Family.CHAT
    capabilities: ClassVar[list[str]] = ["chat-completion", "vision"]
    default_max_batch_size: ClassVar[int] = 8

    def _load(
        self,
        load: dict[str, Any],
        torch_dtype: str | None,
        /,
        *,
        max_images_per_request: int = 8,
        **_entry: Any,
    ):
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        self.max_images_per_request = max_images_per_request
        tokenizer = AutoTokenizer.from_pretrained(self.source, **load)
        self.image_processor = AutoImageProcessor.from_pretrained(self.source, **load)
        model = AutoModelForImageTextToText.from_pretrained(
            self.source, dtype=dtype_for(torch_dtype, self.device), **load
        )
        if not tokenizer.chat_template:
            tokenizer.chat_template = (
                processor_chat_template(self.source, load) or CHATML_VL_TEMPLATE
            )
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2))
        self._rope_index = getattr(getattr(model, "model", model), "get_rope_index", None)
        return model, tokenizer

    def _encode(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> EncodedPrompt:
        converted, images = [], []
        for message in messages:
            parts = []
            for part in content_parts(message):
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind in ("image_url", "image"):
                    url = part.get("image_url", part.get("image"))
                    url = url.get("url") if isinstance(url, dict) else url
                    images.append(load_image_from_data_uri(url))
                    parts.append({"type": "image"})
                else:
                    raise InvalidInput(f"unsupported content part type '{kind}'", param="messages")
            converted.append({**message, "content": parts})
        if len(images) > self.max_images_per_request:
            raise InvalidInput(
                f"at most {self.max_images_per_request} images per request", param="messages"
            )
        prompt = render(self.tokenizer, converted, None, add_generation_prompt, tools)
        if prompt.count(self.image_token) != len(images):
            raise InvalidInput(
                "the number of image placeholders does not match the images", param="messages"
            )
        vision: dict[str, torch.Tensor] = {}
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            vision = {
                "pixel_values": processed["pixel_values"],
                "image_grid_thw": processed["image_grid_thw"],
            }
            pieces = prompt.split(self.image_token)
            expanded = [pieces[0]]
            for grid, piece in zip(processed["image_grid_thw"], pieces[1:], strict=True):
                expanded.append(self.image_token * (int(grid.prod()) // self.merge_size**2))
                expanded.append(piece)
            prompt = "".join(expanded)
        return EncodedPrompt(self.tokenizer.encode(prompt, add_special_tokens=False), vision)

    def _collate_vision(self, encoded: list[EncodedPrompt]) -> dict[str, torch.Tensor]:
        with_images = [e.vision for e in encoded if e.vision]
        if not with_images:
            return {}
        dtype = self.model.dtype
        return {
            "pixel_values": torch.cat([v["pixel_values"] for v in with_images]).to(
                self.device, dtype
            ),
            "image_grid_thw": torch.cat([v["image_grid_thw"] for v in with_images]).to(self.device),
        }

    def _prompt_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multimodal RoPE positions (3 x batch x length) from the model's ``get_rope_index``."""
        if not vision:  # text only: plain positions (the model broadcasts them to 3 axes)
            return super()._prompt_positions(input_ids, attention_mask, vision)
        image_mask = input_ids == self.image_token_id
        rope_kwargs = {
            "image_grid_thw": vision.get("image_grid_thw"),
            "attention_mask": attention_mask,
        }
        if "mm_token_type_ids" in inspect.signature(self._rope_index).parameters:
            rope_kwargs["mm_token_type_ids"] = image_mask.int()
        positions, _ = self._rope_index(input_ids, **rope_kwargs)
        next_positions = positions.amax(dim=(0, 2)) + 1
        return positions, next_positions

    def _step_positions(self, next_positions: torch.Tensor) -> torch.Tensor:
        return next_positions.view(1, -1, 1).expand(3, -1, -1)
