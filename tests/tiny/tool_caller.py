"""A tiny Qwen2 that calls a tool on its own: Qwen 2.5's tool template, trained to memorise.

A random model never writes ``<tool_call>``, so ``tool_choice: "auto"`` (the model decides,
the ``hermes`` parser reads its text) cannot be shown on one. This builder takes the tiny
random Qwen2 of :mod:`tests.tiny.chat` and trains it briefly (AdamW, fixed seed, a few hundred
steps, seconds on a CPU) on the prompts the client tests send, rendered exactly as the chat
handler renders them (the API's tool normalisation, :func:`tool_prompt`, the template):

* the weather question with the weather tool -> ``<tool_call>`` get_weather(city=Paris);
* "Say hello." with the same tool -> plain text.

Before it is cached, the real chat handler must reproduce both answers greedily (else the
build fails). The cache entry's name carries a digest of the conversations, so changing the
tools or questions in tests/tools_support.py rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.tiny.chat import QWEN25_TOOLS_TEMPLATE, _causal_chat
from tests.tiny.common import cached_build
from tests.tools_support import ASK, HELLO, WEATHER

CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
HELLO_TEXT = "Hello! How can I help you today?"
# (messages, tools, the answer to learn)
CONVERSATIONS = [(ASK, [WEATHER], CALL_TEXT), (HELLO, [WEATHER], HELLO_TEXT)]
MAX_STEPS = 400
LEARNING_RATE = 1e-2
MARGIN = 3.0
SEED = 0


def _prompt_ids(tokenizer, messages, tools) -> list[int]:
    """The prompt's token ids as the chat handler makes them for this request."""
    from handlers.chat.prompts import render
    from handlers.chat.tool_parsers import TOOL_PARSERS
    from handlers.chat.tools import tool_prompt
    from inferq.openai.tools import normalized_tools

    tools, _ = normalized_tools(tools, "auto")
    rendered, template_tools = tool_prompt(
        messages, tools, TOOL_PARSERS["hermes"], tokenizer.chat_template
    )
    text = render(tokenizer, rendered, None, True, template_tools)
    return tokenizer.encode(text, add_special_tokens=False)


def _train(model, tokenizer) -> None:
    """Train until every answer token wins greedily by ``MARGIN`` logits (so bfloat16
    inference keeps the same argmax), at most ``MAX_STEPS`` (88 here). One
    thread: a few tiny matrices per step, faster than two threads on a busy machine."""
    import torch

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for messages, tools, answer in CONVERSATIONS:
        prompt = _prompt_ids(tokenizer, messages, tools)
        target = [*tokenizer.encode(answer, add_special_tokens=False), eos]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for _, t in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    # position p predicts token p + 1
    scored, targets = labels[:, 1:] != -100, labels[:, 1:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    try:
        for _ in range(MAX_STEPS):
            optimizer.zero_grad()
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            logits = out.logits[:, :-1][scored].detach()
            wanted = logits.gather(1, targets[scored].unsqueeze(1)).squeeze(1)
            others = logits.scatter(1, targets[scored].unsqueeze(1), float("-inf"))
            if (wanted - others.max(-1).values).min() >= MARGIN:
                break
            out.loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()


def _check(path: Path) -> None:
    """The real handler, greedy, must give both answers (a call parsed, then plain text)."""
    from handlers.chat import TextChatModel
    from inferq.openai.tools import normalized_tools

    handler = TextChatModel(str(path), "cpu", name="tiny-qwen-caller", tool_parser="hermes")
    for messages, tools, answer in CONVERSATIONS:
        tools, _ = normalized_tools(tools, "auto")
        generation = handler.generate(
            messages, max_new_tokens=120, temperature=0.0, tools=tools, tool_choice="auto"
        )
        if answer == CALL_TEXT:
            calls = generation.tool_calls or []
            got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
            ok = got == [("get_weather", {"city": "Paris"})]
        else:
            ok = generation.text == answer and not generation.tool_calls
        if not ok or generation.finish_reason == "length":
            raise RuntimeError(
                f"the tiny tool caller did not learn {answer!r}: got {generation.text!r}, "
                f"{generation.tool_calls}, {generation.finish_reason}"
            )


def _build(path: Path) -> None:
    model, tokenizer = _causal_chat(path, "qwen2", QWEN25_TOOLS_TEMPLATE, silence=False)
    _train(model, tokenizer)
    model.save_pretrained(path)
    _check(path)


def _digest() -> str:
    settings = [MAX_STEPS, LEARNING_RATE, MARGIN, SEED, QWEN25_TOOLS_TEMPLATE]
    data = json.dumps([CONVERSATIONS, settings], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:10]


def tiny_qwen_tool_caller_dir() -> Path:
    return cached_build(f"qwen2-tool-caller-{_digest()}", _build)
