"""LlamaIndex, unchanged, against the running stack: ``OpenAILike`` chat (whole and streamed)
and ``OpenAILikeEmbedding`` embeddings checked against the official client's vectors."""

from __future__ import annotations

from llama_index.embeddings import openai_like as embeddings_like
from llama_index.llms import openai_like

from tests import clients_support as support
from tests.conftest import MINILM


def llm(stack):
    return openai_like.OpenAILike(
        api_base=stack.v1,
        is_chat_model=True,
        context_window=8192,
        max_tokens=support.MAX_TOKENS,
        **support.SMOL_CHAT,
    )


def test_llamaindex_chat_and_stream_chat(smol_stack, openai_client):
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content=support.PROMPT)]
    answer = llm(smol_stack).chat(messages).message.content
    assert "Paris" in answer
    streamed = list(llm(smol_stack).stream_chat(messages))
    assert len(streamed) > 3
    assert streamed[-1].message.content == answer
    assert "".join(chunk.delta or "" for chunk in streamed) == answer
    assert answer == support.official_answer(openai_client)


def test_llamaindex_embeddings_match_the_official_client(stack, openai_client):
    texts = ["LlamaIndex embeds nodes in batches.", "Vectors must match.", "A third text."]
    model = embeddings_like.OpenAILikeEmbedding(
        model_name=MINILM, api_base=stack.v1, embed_batch_size=2, **support.CLIENT
    )
    support.check_embeddings(
        openai_client, texts, model.get_text_embedding_batch, model.get_query_embedding, 1
    )


# Tool calling through LlamaIndex agents (FunctionAgent over OpenAILike with
# is_function_calling_model=True) comes with the tools work of issue 13: add its test here.
