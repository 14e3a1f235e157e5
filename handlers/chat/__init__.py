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
  (:mod:`handlers.chat.structured`) for models whose tokenizer llguidance accepts, and
  ``tools`` are rendered, forced and parsed per model family (:mod:`handlers.chat.tools`).

:meth:`ChatHandler.generate_batch` runs a static batch to completion. The worker's scheduler
uses :class:`ChatBatch` directly for **continuous batching**: between two decoding steps new
requests are prefilled and merged into the running batch (their KV cache left-padded to the
batch's length), and finished or cancelled ones leave it.

Prompts are left-padded; position ids are computed from the attention mask (multimodal RoPE
positions for Qwen-VL images), so a request gives the same greedy output alone or in a batch.

The modules, by what they do:

================  ============================================================================
``request``       :class:`ChatRequest` (one completion's parameters), its validation, the prompt
``prompts``       chat templates and OpenAI message content
``images``        ``data:`` image URIs to ``PIL`` images
``sampling``      the next token: logit bias, grammar mask, temperature, top-p
``text``          incremental detokenization, stop strings, streamed deltas
``row``           one request's decoding state inside a batch
``kv_cache``      KV-cache surgery: select, merge and trim rows
``batch``         :class:`ChatBatch`, the step-level running batch
``handler``       :class:`ChatHandler`, the base class: loading, admission, the hooks
``text_model``    :class:`TextChatModel`
``qwen_vl``       :class:`QwenVLChat`
``structured``    ``response_format`` by constrained decoding (llguidance)
``tools``         tool calling: prompts, forced calls, the streamed split of content and calls
``tool_parsers``  the per-family call formats named by the entry's ``tool_parser``
``tool_scan``     call objects read from growing text: names, raw argument text to stream
================  ============================================================================

Catalog entries name the handlers as ``handlers.chat.TextChatModel`` and
``handlers.chat.QwenVLChat``; those paths are re-exported here and stay.
"""

from handlers.chat.batch import ChatBatch
from handlers.chat.handler import ChatHandler
from handlers.chat.images import load_image_from_data_uri
from handlers.chat.prompts import CHATML_TEMPLATE, CHATML_VL_TEMPLATE
from handlers.chat.qwen_vl import QwenVLChat
from handlers.chat.request import ChatRequest, OnText
from handlers.chat.text_model import TextChatModel

__all__ = [
    "CHATML_TEMPLATE",
    "CHATML_VL_TEMPLATE",
    "ChatBatch",
    "ChatHandler",
    "ChatRequest",
    "OnText",
    "QwenVLChat",
    "TextChatModel",
    "load_image_from_data_uri",
]
