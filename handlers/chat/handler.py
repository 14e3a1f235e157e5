"""The chat handler base class: loading options, request admission, the decoding loop's hooks.

Subclasses (:mod:`.text_model`, :mod:`.qwen_vl`) load their model family in :meth:`_load`,
turn messages into token ids (and vision tensors) in :meth:`_encode`, and may override the
vision and position hooks. The decoding itself runs in :class:`~handlers.chat.batch.ChatBatch`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from handlers.base import ChatGeneration, Family, InvalidInput, resolve_device
from handlers.chat.batch import ChatBatch
from handlers.chat.kv_cache import output_cache
from handlers.chat.logprobs import LogprobRecorder, TokenBytes
from handlers.chat.request import (
    ChatRequest,
    EncodedPrompt,
    completion_budget,
    validate_request,
)
from handlers.chat.row import Row
from handlers.chat.sampling import Sampler
from handlers.chat.structured import StructuredOutputs
from handlers.chat.text import TextStream
from handlers.chat.tools import (
    ToolCallStream,
    forced_functions,
    parser_named,
    template_text,
    tool_prompt,
)
from handlers.dtype import resolve_dtype
from inferq.openai.chat import STRUCTURED_OUTPUTS_UNSUPPORTED

log = logging.getLogger(__name__)


def dtype_for(torch_dtype: str | None, device: torch.device) -> torch.dtype:
    """Entry ``torch_dtype`` (``auto`` when unset): see :mod:`handlers.dtype`."""
    return resolve_dtype(torch_dtype, device)


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


class ChatHandler:
    """Loading options, request validation and the shared batched decoding loop.

    Constructed as the worker constructs every handler: ``Handler(source, device,
    cache_dir=..., **entry)``. Loads offline only. Entry keys a subclass does not take are
    ignored.
    """

    family: ClassVar[Family] = Family.CHAT
    capabilities: ClassVar[list[str]] = ["chat-completion"]
    thread_safe = False
    owned_by = "local"
    default_max_batch_size: ClassVar[int] = 16

    def __init__(
        self,
        source: str | Path,
        device: str | torch.device = "auto",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        supports_structured_outputs: bool | None = None,
        tool_parser: str | None = None,
        torch_dtype: str | None = None,
        revision: str | None = None,
        context_length: int | None = None,
        max_batch_size: int | None = None,
        **entry: Any,
    ):
        self.source = str(source)
        self.name = name or hf_repo_id or self.source
        self.device = torch.device(resolve_device(str(device)))
        self.generation_defaults = dict(defaults or {})
        # None: decided at load (True when llguidance accepts the tokenizer)
        self.supports_structured_outputs = supports_structured_outputs
        self.tool_parser = parser_named(tool_parser)
        self.max_batch_size = (
            self.default_max_batch_size if max_batch_size is None else max_batch_size
        )
        self._configured_context_length = context_length
        self._lock = threading.Lock()
        load: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True}
        if revision:
            load["revision"] = revision
        model, tokenizer = self._load(load, torch_dtype, **entry)
        self._finish_loading(model, tokenizer)

    def _finish_loading(self, model, tokenizer) -> None:
        """Put the model in eval mode on the device; collect EOS/pad ids and forward kwargs."""
        self.model = model.to(self.device).eval()
        self.dtype = model.dtype
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
        if self.supports_structured_outputs is not False:
            structured = StructuredOutputs(tokenizer, self.vocab_size, self.eos_token_ids)
            try:
                structured.warm_up()
            except Exception as exc:
                if self.supports_structured_outputs:  # the entry asked for it: a load error
                    raise
                log.warning("%s: no structured outputs (llguidance: %s)", self.name, exc)
            else:
                self.structured_outputs = structured
        self.supports_structured_outputs = self.structured_outputs is not None
        self.token_bytes = TokenBytes(
            tokenizer, self.vocab_size, self.eos_token_ids, shared=self.structured_outputs
        )

    def _constraint_for(self, request: ChatRequest):
        """The decoding constraint of a request: a forced tool call (``tool_choice`` required
        or named), else its ``response_format`` (None for plain text)."""
        functions = forced_functions(request.tools, request.tool_choice)
        if functions is not None:
            if self.structured_outputs is None or self.tool_parser is None:
                raise InvalidInput(
                    f"model '{self.name}' cannot force tool calls (tool_choice)",
                    param="tool_choice",
                    code=STRUCTURED_OUTPUTS_UNSUPPORTED,
                )
            # a named function is called exactly once (vLLM, OpenAI), whatever
            # parallel_tool_calls says; required allows several unless it is false
            parallel = request.parallel_tool_calls and request.tool_choice == "required"
            grammar = self.tool_parser.grammar(functions, parallel=parallel)
            return self.structured_outputs.lark_constraint(grammar, param="tools")
        response_format = request.response_format
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        if self.structured_outputs is None:
            raise InvalidInput(
                f"model '{self.name}' does not support structured outputs (response_format)",
                param="response_format",
                code=STRUCTURED_OUTPUTS_UNSUPPORTED,
            )
        return self.structured_outputs.constraint(response_format)

    def _uses_chatml(self) -> bool:
        return "<|im_end|>" in (self.tokenizer.chat_template or "")

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    # -- public API ---------------------------------------------------------------------------

    def generate(self, messages: Sequence[dict[str, Any]], **options: Any) -> ChatGeneration:
        """One chat completion (a batch of one). Raises :class:`Cancelled` if cancelled.

        ``options`` are the fields of :class:`ChatRequest` (``max_new_tokens``,
        ``temperature``, ``top_p``, ``stop``, ``cancel_event``, ``seed``, ``on_text``,
        ``response_format``, ``logit_bias``), as the ``ChatModel`` protocol lists them.
        """
        result = self.generate_batch([ChatRequest(messages=messages, **options)])[0]
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

    # -- what a ChatBatch calls ---------------------------------------------------------------

    def _admit(self, request: ChatRequest) -> tuple[Row, EncodedPrompt]:
        """Validate and tokenize one request (raises :class:`InvalidInput`)."""
        validate_request(request, vocab_size=self.vocab_size)
        calls = None  # the output is parsed for tool calls unless tool_choice is none
        if request.prompt is not None:
            prompt = self._encode_raw(request.prompt)
        else:
            if request.tools and request.tool_choice != "none":
                if self.tool_parser is None:
                    raise InvalidInput(
                        f"model '{self.name}' has no tool_parser in its catalog entry",
                        param="tools",
                        code="unsupported_parameter",
                    )
                calls = ToolCallStream(self.tool_parser, request.on_text, request.on_tool_calls)
            messages, tools = tool_prompt(
                list(request.messages),
                request.tools,
                self.tool_parser,
                template_text(self.tokenizer),
            )
            prompt = self._encode(messages, add_generation_prompt=True, tools=tools)
        prompt_tokens = len(prompt.input_ids)
        row = Row(
            request,
            prompt_tokens=prompt_tokens,
            max_new_tokens=completion_budget(request, prompt_tokens, self.context_length),
            sampler=Sampler(request, self.device, self._constraint_for(request), prompt.input_ids),
            stream=TextStream(self.decode, request.stop, calls.feed if calls else request.on_text),
            eos_token_ids=self.eos_token_ids,
            tools=calls,
            logprobs=(
                LogprobRecorder(self.token_bytes, request.logprobs)
                if request.logprobs is not None
                else None
            ),
        )
        return row, prompt

    def _forward(
        self, inputs: dict[str, Any], cache: Any, *, every_position: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """One forward pass; returns the last position's logits (float32) and the cache
        (with ``every_position``, the logits of every position: prompt logprobs)."""
        forward = {**inputs, "use_cache": True, self._cache_kwarg: cache}
        if self._logits_to_keep and not every_position:
            forward["logits_to_keep"] = 1
        output = self.model(**forward)
        if every_position:
            return output.logits.float(), output_cache(output)
        return output.logits[:, -1, :].float(), output_cache(output)

    # -- model-family hooks -------------------------------------------------------------------

    def _load(self, load: dict[str, Any], torch_dtype: str | None, /, **entry: Any):
        """Load ``(model, tokenizer)`` from ``self.source`` with ``from_pretrained`` ``load``."""
        raise NotImplementedError

    def _encode(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> EncodedPrompt:
        """Token ids (and vision tensors) of the prompt; ``tools`` go to the chat template."""
        raise NotImplementedError

    def _encode_raw(self, prompt: str) -> EncodedPrompt:
        """A ``/v1/completions`` prompt: tokenized as it is (the tokenizer's special tokens
        such as BOS added, as vLLM does), no chat template."""
        if not prompt:
            raise InvalidInput("the prompt must not be empty", param="prompt")
        return EncodedPrompt(self.tokenizer(prompt).input_ids)

    def _collate_vision(self, encoded: list[EncodedPrompt]) -> dict[str, torch.Tensor]:
        return {}

    def _prompt_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids for the padded prompt, and each row's next position."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return positions, attention_mask.sum(-1)

    def _step_positions(self, next_positions: torch.Tensor) -> torch.Tensor:
        return next_positions.unsqueeze(-1)
