"""The OpenAI wire contract, defined once and shared by ``api/`` and ``workers/``.

Per endpoint family: the request model the API validates, the normalised job request the
worker receives (typed), and the builders of response bodies and stream chunks.
"""
