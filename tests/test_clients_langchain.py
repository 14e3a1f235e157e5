"""LangChain (``langchain-openai``), unchanged, against the running stack: streaming chat,
``with_structured_output`` on SmolLM2 (constrained decoding), and ``OpenAIEmbeddings``.

``OpenAIEmbeddings`` sends token arrays by default (``check_embedding_ctx_length=True``
tokenizes with tiktoken, which also needs tiktoken's files from the internet); inferq takes
text only, so the README tells users to pass ``check_embedding_ctx_length=False``.
"""

from __future__ import annotations

import langchain_openai
from pydantic import BaseModel, Field

from tests import clients_support as support
from tests.conftest import MINILM


def chat_model(stack, **kwargs):
    return langchain_openai.ChatOpenAI(base_url=stack.v1, **support.SMOL_CHAT, **kwargs)


def test_langchain_streams_a_chat_answer(smol_stack, openai_client):
    chunks = list(chat_model(smol_stack, max_tokens=support.MAX_TOKENS).stream(support.PROMPT))
    assert len(chunks) > 3
    text = "".join(chunk.content for chunk in chunks)
    assert "Paris" in text
    assert text == support.official_answer(openai_client)


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city's name")
    country: str = Field(description="the country the city is in")


def test_langchain_structured_output_returns_a_parsed_object(smol_stack):
    """The default method sends a strict json_schema response_format; SmolLM2's constrained
    decoder guarantees the answer parses into the model."""
    structured = chat_model(smol_stack, max_tokens=200).with_structured_output(
        City, include_raw=True
    )
    answer = structured.invoke("Paris is the capital of France. Give the city and its country.")
    city = answer["parsed"]
    assert isinstance(city, City), answer
    assert "paris" in city.name.lower(), answer
    assert "france" in city.country.lower(), answer
    # compact JSON in the schema's key order: the constrained decoder wrote it
    assert answer["raw"].content == city.model_dump_json()


def test_langchain_embeds_documents_like_the_official_client(stack, openai_client):
    documents = [
        "LangChain embeds a list of documents.",
        "Each vector must match the official client's.",
        "A third, longer document about the weather in Paris in the spring.",
    ]
    embeddings = langchain_openai.OpenAIEmbeddings(
        model=MINILM, base_url=stack.v1, check_embedding_ctx_length=False, **support.CLIENT
    )
    support.check_embeddings(
        openai_client, documents, embeddings.embed_documents, embeddings.embed_query, 0
    )


# Tool calling (``bind_tools`` and an executed tool call) comes with the tools work of
# issue 13: add its test here.
