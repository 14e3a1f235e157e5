"""LlamaIndex, unchanged, against the running stack: ``OpenAILike`` chat (whole and streamed)
and ``OpenAILikeEmbedding`` embeddings checked against the official client's vectors."""

from __future__ import annotations

import numpy as np
from llama_index.embeddings import openai_like as embeddings_like
from llama_index.llms import openai_like

from tests.conftest import MINILM, SMOL


def llm(stack):
    return openai_like.OpenAILike(
        model=SMOL,
        api_base=stack.v1,
        api_key="unused",
        is_chat_model=True,
        context_window=8192,
        temperature=0,
        max_tokens=24,
        max_retries=0,
        timeout=300,
    )


def test_llamaindex_chat_and_stream_chat(smol_stack, openai_client):
    from llama_index.core.llms import ChatMessage

    prompt = "What is the capital of France?"
    messages = [ChatMessage(role="user", content=prompt)]
    answer = llm(smol_stack).chat(messages).message.content
    assert "Paris" in answer
    streamed = list(llm(smol_stack).stream_chat(messages))
    assert len(streamed) > 3
    assert streamed[-1].message.content == answer
    assert "".join(chunk.delta or "" for chunk in streamed) == answer
    whole = openai_client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=24,
    )
    assert answer == whole.choices[0].message.content


def test_llamaindex_embeddings_match_the_official_client(stack, openai_client):
    texts = ["LlamaIndex embeds nodes in batches.", "Vectors must match.", "A third text."]
    model = embeddings_like.OpenAILikeEmbedding(
        model_name=MINILM, api_base=stack.v1, api_key="unused", embed_batch_size=2, max_retries=0
    )
    got = np.array(model.get_text_embedding_batch(texts), dtype=np.float32)
    official = openai_client.embeddings.create(model=MINILM, input=texts)
    expected = np.array([d.embedding for d in official.data], dtype=np.float32)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    query = np.array(model.get_query_embedding(texts[1]), dtype=np.float32)
    np.testing.assert_allclose(query, expected[1], atol=1e-6)


# Tool calling through LlamaIndex agents (FunctionAgent over OpenAILike with
# is_function_calling_model=True) comes with the tools work of issue 13: add its test here.
