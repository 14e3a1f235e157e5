"""Chat test support: the test catalog's chat entries and a fake OpenAI upstream server.

The upstream is a real HTTP server (FastAPI under uvicorn, in a thread of the test process) on
the port the proxy entries name. It checks the API key, answers with the model id it received
(so tests can see the body was forwarded with ``model`` replaced), streams chunks with small
pauses, and fails or stalls on request (``FAIL`` / ``SLOW`` in the last user message).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

UPSTREAM_KEY_ENV = "INFERQ_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-test"
UPSTREAM_CHAT_MODEL = "upstream/chat-model"
UPSTREAM_EMBED_MODEL = "upstream/embed-model"
PROXY_TIMEOUT_SEC = 2.0


def chat_entries(upstream_port: int) -> list[dict[str, Any]]:
    """Entries the stack's catalog gets for the chat tests (tiny models are built if needed)."""
    from tests.tiny.chat import tiny_llama_chat_dir, tiny_qwen2_tools_dir, tiny_qwen3_vl_dir
    from tests.tiny.tool_caller import tiny_qwen_tool_caller_dir

    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxy = {
        "upstream_base_url": upstream,
        "upstream_api_key_env": UPSTREAM_KEY_ENV,
        "skip_download": True,
        "options": {"timeout": PROXY_TIMEOUT_SEC},
    }
    return [
        {
            "name": "tiny-llama-chat",
            "hf_repo_id": "inferq-tests/tiny-llama-chat",
            "handler": "handlers.chat.TextChatModel",
            "local_dir": str(tiny_llama_chat_dir()),
            "defaults": {"max_tokens": 16},
        },
        {  # a Qwen 2.5 tool-calling template (tests/test_chat_tools.py starts its worker)
            "name": "tiny-qwen-tools",
            "hf_repo_id": "inferq-tests/tiny-qwen-tools",
            "handler": "handlers.chat.TextChatModel",
            "local_dir": str(tiny_qwen2_tools_dir()),
            "tool_parser": "hermes",
            "defaults": {"max_tokens": 16},
        },
        {  # trained to call get_weather on its own (tests/test_chat_tools_auto.py)
            "name": "tiny-qwen-caller",
            "hf_repo_id": "inferq-tests/tiny-qwen-caller",
            "handler": "handlers.chat.TextChatModel",
            "local_dir": str(tiny_qwen_tool_caller_dir()),
            "tool_parser": "hermes",
        },
        {
            "name": "tiny-qwen3-vl",
            "hf_repo_id": "inferq-tests/tiny-qwen3-vl",
            "handler": "handlers.chat.QwenVLChat",
            "local_dir": str(tiny_qwen3_vl_dir()),
        },
        {
            "name": "proxy-chat",
            "hf_repo_id": "inferq-tests/proxy-chat",
            "handler": "handlers.proxy.OpenAIChatProxyModel",
            "upstream_model": UPSTREAM_CHAT_MODEL,
            **proxy,
        },
        {
            "name": "proxy-embed",
            "hf_repo_id": "inferq-tests/proxy-embed",
            "handler": "handlers.proxy.OpenAIEmbeddingProxyModel",
            "upstream_model": UPSTREAM_EMBED_MODEL,
            **proxy,
        },
    ]


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_upstream_app():
    app = FastAPI()
    app.state.bodies = []

    def error(status: int, message: str) -> JSONResponse:
        body = {"error": {"message": message, "type": "upstream_test", "param": None, "code": None}}
        return JSONResponse(body, status_code=status)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return error(401, "bad upstream key")
        body = await request.json()
        app.state.bodies.append(body)
        last = str(body["messages"][-1].get("content", ""))
        if "FAIL" in last:
            return error(500, "upstream exploded on purpose")
        if "SLOW" in last:
            await asyncio.sleep(PROXY_TIMEOUT_SEC * 3)
        words = [f"echo:{body['model']}", " tools" if body.get("tools") else "", " done"]
        head = {"id": "chatcmpl-upstream", "created": 1700000000, "model": body["model"]}
        if not body.get("stream"):
            return {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }

        async def chunks():
            def data(choices, **extra) -> str:
                chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
                return f"data: {json.dumps(chunk)}\n\n"

            yield data([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            for word in words:
                await asyncio.sleep(0.05)
                yield data([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
            yield data([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
                yield data([], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return error(401, "bad upstream key")
        body = await request.json()
        app.state.bodies.append(body)
        return {
            "id": "cmpl-upstream",
            "object": "text_completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "text": f"echo:{body['model']}",
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
        }

    @app.get("/images/{name}")
    async def image(name: str):
        if name == "redirect":
            return RedirectResponse("/images/red.png", status_code=302)
        if name == "loop":
            return RedirectResponse("/images/loop", status_code=302)
        if name == "page.html":
            return Response(b"<html></html>", media_type="text/html")
        return Response(png_bytes(), media_type="image/png")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return error(401, "bad upstream key")
        body = await request.json()
        app.state.bodies.append(body)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
                for i, t in enumerate(texts)
            ],
            "model": body["model"],
            "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
        }

    return app


class FakeUpstream:
    """The fake upstream served by uvicorn in a daemon thread."""

    def __init__(self, sock: socket.socket):
        import uvicorn

        self.app = _fake_upstream_app()
        config = uvicorn.Config(self.app, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self.app.state.bodies

    def start(self) -> FakeUpstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def sse_events(response: httpx.Response) -> list[dict]:
    """Parse a text/event-stream body into ``{"id", "event", "data"}`` dicts."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value[1:] if value.startswith(" ") else value
    return events


def data_uri() -> str:
    """A small PNG as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]
