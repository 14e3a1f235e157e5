"""Third-party client test support (LangChain, LlamaIndex): the settings their clients share,
and the official ``openai`` client's answers that theirs must equal."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tests.conftest import MINILM, SMOL

PROMPT = "What is the capital of France?"
MAX_TOKENS = 24
# what every client under test is given (the keyword names are the same in both libraries):
# no retries, so a failed request fails the test instead of being sent again
CLIENT = {"api_key": "unused", "max_retries": 0}
# the chat clients: greedy SmolLM2, and time for its first load
SMOL_CHAT = {"model": SMOL, **CLIENT, "temperature": 0, "timeout": 300}


def official_answer(openai_client, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> str:
    """SmolLM2's greedy answer to ``prompt`` through the official client."""
    whole = openai_client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    return whole.choices[0].message.content


def check_embeddings(
    openai_client,
    texts: Sequence[str],
    embed_texts: Callable[[list[str]], list[list[float]]],
    embed_query: Callable[[str], list[float]],
    query_index: int,
) -> None:
    """A client's MiniLM vectors of ``texts`` (one batched call) and of ``texts[query_index]``
    as a query equal the official client's for the same input: the query against the text sent
    alone, since a bf16 model's vector of a text moves by up to ~1e-3 with the batch it is in."""
    got = np.array(embed_texts(list(texts)), dtype=np.float32)
    official = openai_client.embeddings.create(model=MINILM, input=list(texts))
    expected = np.array([d.embedding for d in official.data], dtype=np.float32)
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    query = np.array(embed_query(texts[query_index]), dtype=np.float32)
    alone = openai_client.embeddings.create(model=MINILM, input=texts[query_index])
    np.testing.assert_allclose(
        query, np.array(alone.data[0].embedding, dtype=np.float32), atol=1e-6
    )
