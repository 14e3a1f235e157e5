"""Chat completion handlers: text-only causal LMs and Qwen-VL vision-language models.

Both handlers share one decoding loop (:class:`ChatBatch`), written by hand over
``model.forward`` with a KV cache instead of ``model.generate``, because the worker needs
per-request control inside one batch:

* every request keeps its own ``max_new_tokens``, ``temperature``/``top_p``, seed, stop strings,
  ``cancel_event`` and ``on_text`` streaming callback;
* a request that finishes (EOS, stop string, length), is cancelled, or whose callback raises is
  dropped from the batch (its rows are removed from the KV cache), and the others go on;
* cancellation is checked before every forward pass, so a set ``cancel_event`` ends its
  request within one decoding step (this plays the role of a ``StoppingCriteria``);
* text is streamed as it is decoded, holding back a possible partial stop string and
  incomplete UTF-8, so the concatenated deltas equal the final text;
* ``response_format`` (JSON object / JSON schema) is enforced by constrained decoding
  (:mod:`handlers.structured`) for models whose entry sets ``supports_structured_outputs``.

:meth:`_ChatHandler.generate_batch` runs a static batch to completion. The worker's scheduler
uses :class:`ChatBatch` directly for **continuous batching**: between two decoding steps new
requests are prefilled and merged into the running batch (their KV cache left-padded to the
batch's length), and finished or cancelled ones leave it.

Prompts are left-padded; position ids are computed from the attention mask (multimodal RoPE
positions for Qwen-VL images), so a request gives the same greedy output alone or in a batch.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from handlers.base import Cancelled, ChatGeneration, InvalidInput, resolve_device

OnText = Callable[[str], None]

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

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.S
)


@dataclass
class ChatRequest:
    """One chat completion inside :meth:`generate_batch`. ``temperature`` 0 means greedy."""

    messages: Sequence[dict[str, Any]]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    cancel_event: threading.Event | None = None
    on_text: OnText | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's)


def load_image_from_data_uri(uri: str):
    """Decode a ``data:image/...;base64,...`` URI into an RGB ``PIL.Image``.

    Any other scheme (http, file, ...) raises :class:`InvalidInput`: fetching remote images
    is the worker's decision, made before the handler is called.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(uri, str) or not uri.startswith("data:"):
        scheme = uri.split(":", 1)[0] if isinstance(uri, str) and ":" in uri else "none"
        raise InvalidInput(
            f"only data: URIs with base64 images are accepted here (got scheme '{scheme}')",
            param="messages",
            code="invalid_image_url",
        )
    match = _DATA_URI.match(uri)
    if match is None or ";base64" not in match["params"]:
        raise InvalidInput(
            "malformed image data URI: expected data:image/<type>;base64,<data>",
            param="messages",
            code="invalid_image_url",
        )
    mime = match["mime"] or ""
    if mime and not mime.startswith("image/"):
        raise InvalidInput(
            f"data URI is '{mime}', not an image", param="messages", code="invalid_image_url"
        )
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", match["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"image data URI is not valid base64: {exc}", param="messages", code="invalid_image_url"
        ) from exc
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidInput(
            f"could not decode image: {exc}", param="messages", code="invalid_image"
        ) from exc


def _dtype_for(torch_dtype: str | None, device: torch.device):
    """Entry ``torch_dtype`` (``float16``, ``bfloat16``, ``auto`` ...); default fp32 on CPU."""
    if not torch_dtype:
        return torch.float32 if device.type == "cpu" else "auto"
    if torch_dtype == "auto":
        return "auto"
    dtype = getattr(torch, torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch_dtype '{torch_dtype}'")
    return dtype


def _eos_ids(*candidates: Any) -> set[int]:
    ids: set[int] = set()
    for value in candidates:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple | set):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _first_present(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


@dataclass
class _Encoded:
    """One request's prompt, tokenized (and for VL, its images preprocessed)."""

    input_ids: list[int]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)


class _Row:
    """Decoding state of one request: sampling, incremental detokenization, stops, streaming."""

    def __init__(
        self, handler: _ChatHandler, request: ChatRequest, prompt_tokens: int, max_new_tokens: int
    ):
        self.handler = handler
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.stops = [s for s in (request.stop or []) if s]
        self.token_ids: list[int] = []
        self.completion_tokens = 0
        self.text = ""  # decoded so far (complete characters only)
        self.emitted = 0  # len(text) already passed to on_text
        self.prefix_offset = 0  # incremental detokenization window, as in vLLM
        self.read_offset = 0
        self.result: ChatGeneration | Exception | None = None
        self.key: Any = None  # the caller's handle for this request (see ChatBatch)
        self.constraint = handler._constraint_for(request)
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if request.logit_bias:
            ids, values = zip(*request.logit_bias.items(), strict=True)
            self.bias = (
                torch.tensor(ids, dtype=torch.long, device=handler.device),
                torch.tensor(values, dtype=torch.float32, device=handler.device),
            )
        self.generator: torch.Generator | None = None
        if request.temperature > 0:
            self.generator = torch.Generator(device=handler.device)
            if request.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(request.seed)

    @property
    def done(self) -> bool:
        return self.result is not None

    def pick(self, logits: torch.Tensor, greedy_token: int) -> int:
        """Next token from this row's last-position logits (float32, shape ``[vocab]``)."""
        request = self.request
        if self.bias is not None or self.constraint is not None:
            logits = logits.clone()
            if self.bias is not None:
                logits.index_add_(0, *self.bias)
            if self.constraint is not None:
                self.constraint.mask_(logits)
            greedy_token = int(logits.argmax())
        if self.generator is None:
            return greedy_token
        probs = torch.softmax(logits / request.temperature, dim=-1)
        if request.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= request.top_p
            outside[0] = False  # always keep the most likely token
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def cancel_requested(self) -> bool:
        event = self.request.cancel_event
        return event is not None and event.is_set()

    def fail(self, error: Exception) -> None:
        self.result = error

    def append(self, token: int) -> None:
        """Account for one generated token; may finish the row (stop, EOS or length)."""
        self.completion_tokens += 1
        if token in self.handler.eos_token_ids:
            self._finish("stop")
            return
        if self.constraint is not None:
            self.constraint.consume(token)
        self.token_ids.append(token)
        self._decode_new_text()
        for stop in self.stops:
            # A stop string never begins inside already emitted text (see _emit), so the
            # search can start there.
            cut = self.text.find(stop, self.emitted)
            if cut >= 0:
                self.text = self.text[:cut]
                self._finish("stop", flush=False)
                return
        if self.constraint is not None and self.constraint.finished:
            self._finish("stop")
            return
        if self.completion_tokens >= self.max_new_tokens:
            self._finish("length")
            return
        self._emit(len(self.text) - self._partial_stop_length())

    def _decode_new_text(self) -> None:
        """Append newly completed characters to ``text`` (holds back partial UTF-8)."""
        decode = self.handler.decode
        prefix_text = decode(self.token_ids[self.prefix_offset : self.read_offset])
        new_text = decode(self.token_ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)

    def _partial_stop_length(self) -> int:
        """Length of the longest suffix of ``text`` that could start a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, upto: int) -> None:
        if upto > self.emitted and self.request.on_text is not None:
            delta = self.text[self.emitted : upto]
            self.emitted = upto
            self.request.on_text(delta)
        self.emitted = max(self.emitted, upto)

    def _finish(self, reason: Literal["stop", "length"], *, flush: bool = True) -> None:
        if flush and self.read_offset < len(self.token_ids):
            # Trailing tokens that never completed a character: emit them as decoded.
            decode = self.handler.decode
            prefix_text = decode(self.token_ids[self.prefix_offset : self.read_offset])
            self.text += decode(self.token_ids[self.prefix_offset :])[len(prefix_text) :]
            self.read_offset = len(self.token_ids)
        self._emit(len(self.text))
        self.result = ChatGeneration(
            text=self.text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=reason,
        )


class _ChatHandler:
    """Loading options, request validation and the shared batched decoding loop.

    Subclasses provide :meth:`_encode` (messages -> token ids and vision tensors) and may
    override :meth:`_collate_vision` / :meth:`_prompt_positions` / :meth:`_step_positions`.
    """

    capabilities: ClassVar[list[str]] = ["chat-completion"]
    thread_safe = False
    owned_by = "local"

    def _init_common(
        self,
        source: str | Path,
        device: str | torch.device,
        *,
        name: str | None,
        hf_repo_id: str | None,
        defaults: dict[str, Any] | None,
        supports_structured_outputs: bool,
        context_length: int | None,
        max_batch_size: int,
    ) -> None:
        self.source = str(source)
        self.name = name or hf_repo_id or self.source
        self.device = torch.device(resolve_device(str(device)))
        self.generation_defaults = dict(defaults or {})
        self.supports_structured_outputs = bool(supports_structured_outputs)
        self.max_batch_size = max_batch_size
        self._configured_context_length = context_length
        self._lock = threading.Lock()

    def _finish_loading(self, model, tokenizer) -> None:
        """Put the model in eval mode on the device; collect EOS/pad ids and forward kwargs."""
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        generation_config = getattr(model, "generation_config", None)
        self.eos_token_ids = _eos_ids(
            getattr(generation_config, "eos_token_id", None),
            getattr(model.config, "eos_token_id", None),
            tokenizer.eos_token_id,
        )
        if "<|im_end|>" in tokenizer.get_vocab() and self._uses_chatml():
            self.eos_token_ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.pad_token_id = _first_present(
            tokenizer.pad_token_id,
            getattr(generation_config, "pad_token_id", None),
            min(self.eos_token_ids) if self.eos_token_ids else None,
            0,
        )
        text_config = model.config.get_text_config()
        self.context_length = int(
            self._configured_context_length
            or getattr(text_config, "max_position_embeddings", None)
            or 1 << 30
        )
        forward_params = inspect.signature(model.forward).parameters
        # transformers 5 renamed ``past_key_values`` to ``cache``.
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in forward_params
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.structured_outputs = None
        if self.supports_structured_outputs:
            from handlers.structured import StructuredOutputs

            self.structured_outputs = StructuredOutputs(
                tokenizer, self.vocab_size, self.eos_token_ids
            )
            self.structured_outputs.warm_up()

    def _constraint_for(self, request: ChatRequest):
        """The decoding constraint of a request's ``response_format`` (None for plain text)."""
        response_format = request.response_format
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        if self.structured_outputs is None:
            raise InvalidInput(
                f"model '{self.name}' does not support structured outputs (response_format)",
                param="response_format",
                code="unsupported_response_format",
            )
        return self.structured_outputs.constraint(response_format)

    def _uses_chatml(self) -> bool:
        return "<|im_end|>" in (self.tokenizer.chat_template or "")

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    # -- public API ---------------------------------------------------------------------------

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None = None,
        cancel_event: threading.Event | None = None,
        seed: int | None = None,
        on_text: OnText | None = None,
        response_format: dict[str, Any] | None = None,
        logit_bias: dict[int, float] | None = None,
    ) -> ChatGeneration:
        """One chat completion (a batch of one). Raises :class:`Cancelled` if cancelled."""
        request = ChatRequest(
            messages=messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            cancel_event=cancel_event,
            on_text=on_text,
            response_format=response_format,
            logit_bias=logit_bias,
        )
        result = self.generate_batch([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatGeneration | Exception]:
        """Decode several requests together in shared forward passes (static batching).

        Returns one entry per request, in order: its :class:`ChatGeneration`, or the exception
        that ended it (:class:`InvalidInput`, :class:`Cancelled`, an ``on_text`` error, or a
        failure of a shared forward pass, which ends every request still running).
        Batches larger than ``max_batch_size`` run as consecutive chunks.
        """
        results: dict[int, ChatGeneration | Exception] = {}
        with self._lock, torch.inference_mode():
            for start in range(0, len(requests), self.max_batch_size):
                batch = ChatBatch(self)
                chunk = requests[start : start + self.max_batch_size]
                ended = batch._add([(start + i, r) for i, r in enumerate(chunk)])
                while len(batch):
                    ended += batch._step()
                results.update(ended)
        return [results[i] for i in range(len(requests))]

    def new_batch(self) -> ChatBatch:
        """An empty running batch for continuous batching (see :class:`ChatBatch`)."""
        return ChatBatch(self)

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> int:
        return len(self._encode(messages, add_generation_prompt=add_generation_prompt).input_ids)

    # -- decoding ----------------------------------------------------------------------------

    def _validate(self, request: ChatRequest) -> None:
        if not request.messages:
            raise InvalidInput("messages must not be empty", param="messages")
        if request.max_new_tokens is None or request.max_new_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
        if request.temperature is None or request.temperature < 0:
            raise InvalidInput("temperature must be >= 0", param="temperature")
        if request.top_p is None or not 0 <= request.top_p <= 1:
            raise InvalidInput("top_p must be between 0 and 1", param="top_p")
        if request.stop is not None and not all(isinstance(s, str) for s in request.stop):
            raise InvalidInput("stop must be a list of strings", param="stop")
        for token, bias in (request.logit_bias or {}).items():
            if not 0 <= token < self.vocab_size:
                raise InvalidInput(
                    f"logit_bias names token {token}; this model's token ids are 0 to "
                    f"{self.vocab_size - 1}",
                    param="logit_bias",
                )
            if not -100 <= bias <= 100:
                raise InvalidInput(
                    "logit_bias values must be between -100 and 100", param="logit_bias"
                )

    def _admit(self, request: ChatRequest) -> tuple[_Row, _Encoded]:
        """Validate and tokenize one request (raises :class:`InvalidInput`)."""
        self._validate(request)
        prompt = self._encode(request.messages, add_generation_prompt=True)
        prompt_tokens = len(prompt.input_ids)
        if prompt_tokens >= self.context_length:
            raise InvalidInput(
                f"the prompt has {prompt_tokens} tokens; this model's context is "
                f"{self.context_length} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        budget = min(request.max_new_tokens, self.context_length - prompt_tokens)
        return _Row(self, request, prompt_tokens, budget), prompt

    def _forward(self, inputs: dict[str, Any], cache: Any) -> tuple[torch.Tensor, Any]:
        """One forward pass; returns the last position's logits (float32) and the cache."""
        forward = {**inputs, "use_cache": True, self._cache_kwarg: cache}
        if self._logits_to_keep:
            forward["logits_to_keep"] = 1
        output = self.model(**forward)
        return output.logits[:, -1, :].float(), _output_cache(output)

    # -- model-family hooks -------------------------------------------------------------------

    def _encode(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool
    ) -> _Encoded:
        raise NotImplementedError

    def _collate_vision(self, encoded: list[_Encoded]) -> dict[str, torch.Tensor]:
        return {}

    def _prompt_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids for the padded prompt, and each row's next position."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return positions, attention_mask.sum(-1)

    def _step_positions(self, next_positions: torch.Tensor) -> torch.Tensor:
        return next_positions.unsqueeze(-1)


class ChatBatch:
    """A running batch of chat requests, advanced one decoding step at a time.

    ``add`` prefills new requests (together, in one forward pass) and merges them into the
    running batch; ``step`` runs one forward pass for every running request. Both return the
    requests that ended, as ``(key, ChatGeneration | Exception)`` with the caller's key.
    Rows are left-padded; each keeps its own positions, so its greedy output does not depend
    on the batch it runs in. A cancelled request leaves before the next forward pass; a failed
    prefill fails only the requests it was prefilling.

    New requests can join a non-empty batch when its KV cache is a plain ``DynamicCache``
    (:attr:`joinable`); otherwise callers wait for the batch to drain (static batching).
    Not thread-safe: one thread drives a batch (the public methods take the handler's lock).
    """

    def __init__(self, handler: _ChatHandler):
        self.handler = handler
        self.rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [batch, cached + 1]: includes the next token
        self._tokens: torch.Tensor | None = None  # [batch, 1]: the tokens to feed next
        self._positions: torch.Tensor | None = None  # [batch]: their positions

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def joinable(self) -> bool:
        return not self.rows or _mergeable(self._cache)

    def add(self, items: list[tuple[Any, ChatRequest]]) -> list[tuple[Any, Any]]:
        with self.handler._lock, torch.inference_mode():
            return self._add(items)

    def step(self) -> list[tuple[Any, Any]]:
        with self.handler._lock, torch.inference_mode():
            return self._step()

    # -- internals (the handler's lock held, inference mode on) -------------------------------

    def _add(self, items: list[tuple[Any, ChatRequest]]) -> list[tuple[Any, Any]]:
        if not self.joinable:
            raise RuntimeError("this batch's KV cache cannot take new rows; let it drain first")
        handler = self.handler
        ended: list[tuple[Any, Any]] = []
        rows: list[_Row] = []
        encoded: list[_Encoded] = []
        for key, request in items:
            try:
                row, prompt = handler._admit(request)
            except Exception as exc:  # per-request input problems; the others still run
                ended.append((key, exc))
                continue
            row.key = key
            if row.cancel_requested():
                ended.append((key, Cancelled()))
                continue
            rows.append(row)
            encoded.append(prompt)
        if not rows:
            return ended
        try:
            cache, mask, tokens, positions = self._prefill(rows, encoded)
        except Exception as exc:  # fails the requests being prefilled, not the running ones
            return ended + [(row.key, exc) for row in rows]
        self._merge(rows, cache, mask, tokens, positions)
        return ended + self._drop_done()

    def _prefill(self, rows: list[_Row], encoded: list[_Encoded]):
        handler = self.handler
        width = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(rows), width), handler.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, prompt in enumerate(encoded):
            input_ids[i, width - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
            mask[i, width - len(prompt.input_ids) :] = 1
        input_ids = input_ids.to(handler.device)
        mask = mask.to(handler.device)
        vision = handler._collate_vision(encoded)
        position_ids, next_positions = handler._prompt_positions(input_ids, mask, vision)
        inputs = {
            "input_ids": input_ids,
            **vision,
            "attention_mask": mask,
            "position_ids": position_ids,
        }
        logits, cache = handler._forward(inputs, None)
        tokens = self._pick(rows, logits)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        return cache, mask, tokens, next_positions

    def _merge(self, rows, cache, mask, tokens, positions) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            self._tokens, self._positions = tokens, positions
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, width - old), _pad_left(theirs.keys, width - new)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, width - old), _pad_left(theirs.values, width - new)]
            )
        pad = torch.nn.functional.pad
        self._mask = torch.cat([pad(self._mask, (width - old, 0)), pad(mask, (width - new, 0))])
        self._tokens = torch.cat([self._tokens, tokens])
        self._positions = torch.cat([self._positions, positions])
        self.rows = self.rows + rows

    def _step(self) -> list[tuple[Any, Any]]:
        for row in self.rows:
            if not row.done and row.cancel_requested():
                row.fail(Cancelled())
        ended = self._drop_done()
        if not self.rows:
            return ended
        handler = self.handler
        inputs = {
            "input_ids": self._tokens,
            "attention_mask": self._mask,
            "position_ids": handler._step_positions(self._positions),
        }
        try:
            logits, self._cache = handler._forward(inputs, self._cache)
        except Exception as exc:  # a failed shared pass ends every request in it
            for row in self.rows:
                if not row.done:
                    row.fail(exc)
            return ended + self._drop_done()
        self._tokens = self._pick(self.rows, logits)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        self._positions = self._positions + 1
        return ended + self._drop_done()

    def _pick(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for pos, row in enumerate(rows):
            try:
                token = row.pick(logits[pos], greedy[pos])
                row.append(token)
            except Exception as exc:  # on_text raised, or the grammar broke: this row ends
                token = greedy[pos]
                row.fail(exc)
            tokens.append(token)
        return torch.tensor(tokens, device=self.handler.device).unsqueeze(-1)

    def _drop_done(self) -> list[tuple[Any, Any]]:
        """Remove finished rows (from the KV cache too); returns them as (key, result)."""
        if all(not row.done for row in self.rows):
            return []
        ended = [(row.key, row.result) for row in self.rows if row.done]
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._tokens = self._positions = None
            return ended
        index = torch.tensor(keep, device=self.handler.device)
        _select_cache_rows(self._cache, index)
        self._mask = self._mask[index]
        self._tokens = self._tokens[index]
        self._positions = self._positions[index]
        self._trim()
        return ended

    def _trim(self) -> None:
        """Drop leading cache columns that are padding for every remaining row."""
        if not _mergeable(self._cache):
            return
        used = self._mask.any(dim=0)
        first = int(used.int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]


def _mergeable(cache: Any) -> bool:
    """Whether rows can be added to / trimmed from this cache (plain dynamic layers only)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
        for layer in layers
    )


def _pad_left(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """Pad a ``[batch, heads, length, dim]`` cache tensor with ``count`` zero columns in front."""
    if count == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, count, 0))


def _output_cache(output: Any):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _select_cache_rows(cache: Any, index: torch.Tensor) -> None:
    """Keep only the batch rows ``index`` of a KV cache, in place."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
    else:
        cache.reorder_cache(index)


def _render(
    tokenizer, messages: list[dict[str, Any]], template: str | None, add_generation_prompt: bool
) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja raise_exception(...) in templates: bad role order etc.
        raise InvalidInput(f"could not apply the chat template: {exc}", param="messages") from exc


def _content_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI message content as a list of parts (a string becomes one text part)."""
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise InvalidInput("message content must be a string or a list of parts", param="messages")


class TextChatModel(_ChatHandler):
    """Chat with a transformers causal LM (``AutoModelForCausalLM``) and its chat template.

    Loads offline only. With ``gguf_file`` in the entry, ``source`` is the folder (or repo)
    holding that GGUF file; model and tokenizer are read from it and dequantized to
    ``torch_dtype`` (default float32 on CPU; needs the ``gguf`` package).
    """

    capabilities: ClassVar[list[str]] = ["chat-completion"]

    def __init__(
        self,
        source: str | Path,
        device: str | torch.device = "auto",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        supports_structured_outputs: bool = False,
        gguf_file: str | None = None,
        torch_dtype: str | None = None,
        revision: str | None = None,
        context_length: int | None = None,
        max_batch_size: int = 16,
        **_entry: Any,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._init_common(
            source,
            device,
            name=name,
            hf_repo_id=hf_repo_id,
            defaults=defaults,
            supports_structured_outputs=supports_structured_outputs,
            context_length=context_length,
            max_batch_size=max_batch_size,
        )
        load: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True}
        if revision:
            load["revision"] = revision
        if gguf_file:
            load["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(self.source, **load)
        model = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=_dtype_for(torch_dtype, self.device), **load
        )
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        self._finish_loading(model, tokenizer)

    def _encode(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool
    ) -> _Encoded:
        flat = []
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise InvalidInput("each message needs a role", param="messages")
            texts = []
            for part in _content_parts(message):
                if part.get("type") != "text":
                    raise InvalidInput(
                        f"model '{self.name}' accepts text only, not '{part.get('type')}' parts",
                        param="messages",
                    )
                texts.append(str(part.get("text", "")))
            flat.append({**message, "content": "\n".join(texts)})
        prompt = _render(self.tokenizer, flat, None, add_generation_prompt)
        return _Encoded(self.tokenizer.encode(prompt, add_special_tokens=False))


class QwenVLChat(_ChatHandler):
    """Vision-language chat for Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

    Message content may be a string or a list of ``{"type": "text", "text": ...}`` and
    ``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}`` parts. Only
    data URIs are accepted (the worker turns remote URLs into data URIs by its own policy).

    Inputs are prepared with the tokenizer and the image processor directly rather than
    ``AutoProcessor``: the Qwen-VL processors also construct a video processor, which needs
    torchvision; images alone do not. The image placeholder is expanded exactly as the
    processor does (``grid_t*grid_h*grid_w / merge_size**2`` image tokens per image).
    """

    capabilities: ClassVar[list[str]] = ["chat-completion", "vision"]

    def __init__(
        self,
        source: str | Path,
        device: str | torch.device = "auto",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        supports_structured_outputs: bool = False,
        torch_dtype: str | None = None,
        revision: str | None = None,
        context_length: int | None = None,
        max_batch_size: int = 8,
        max_images_per_request: int = 8,
        **_entry: Any,
    ):
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        self._init_common(
            source,
            device,
            name=name,
            hf_repo_id=hf_repo_id,
            defaults=defaults,
            supports_structured_outputs=supports_structured_outputs,
            context_length=context_length,
            max_batch_size=max_batch_size,
        )
        self.max_images_per_request = max_images_per_request
        load: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True}
        if revision:
            load["revision"] = revision
        tokenizer = AutoTokenizer.from_pretrained(self.source, **load)
        self.image_processor = AutoImageProcessor.from_pretrained(self.source, **load)
        model = AutoModelForImageTextToText.from_pretrained(
            self.source, dtype=_dtype_for(torch_dtype, self.device), **load
        )
        if not tokenizer.chat_template:
            tokenizer.chat_template = (
                _processor_chat_template(self.source, load) or CHATML_VL_TEMPLATE
            )
        self._finish_loading(model, tokenizer)
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2))
        self._rope_index = getattr(getattr(model, "model", model), "get_rope_index", None)

    def _encode(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool
    ) -> _Encoded:
        converted, images = [], []
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise InvalidInput("each message needs a role", param="messages")
            parts = []
            for part in _content_parts(message):
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
        prompt = _render(self.tokenizer, converted, None, add_generation_prompt)
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
        return _Encoded(self.tokenizer.encode(prompt, add_special_tokens=False), vision)

    def _collate_vision(self, encoded: list[_Encoded]) -> dict[str, torch.Tensor]:
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


def _processor_chat_template(source: str, load: dict[str, Any]) -> str | None:
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
