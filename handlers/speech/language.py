"""Request languages: ISO-639-1 codes or English names, checked against what a model speaks."""

from __future__ import annotations

from collections.abc import Collection

from handlers.base import InvalidInput

# Languages written without spaces between words: one word per character sequence.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def language_names() -> dict[str, str]:
    """English language name -> code (transformers' table; empty without transformers)."""
    try:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE
    except ImportError:  # faster-whisper only installs: codes only
        return {}
    return dict(TO_LANGUAGE_CODE)


def whisper_language_codes() -> list[str]:
    """Every language code of Whisper's vocabulary, in vocabulary order."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)


def language_code(
    language: str | None, *, model_name: str, multilingual: bool, supported: Collection[str]
) -> str | None:
    """The code to decode with: ``None`` (detect) or ``"en"`` when no language is given
    (multilingual or English-only models); :class:`InvalidInput` for one the model lacks."""
    if language is None or not language.strip():
        return None if multilingual else "en"
    code = language.strip().lower()
    code = language_names().get(code, code)
    if not multilingual and code != "en":
        raise InvalidInput(
            f"model {model_name!r} is English-only; language {language!r} is not supported",
            param="language",
            code="unsupported_language",
        )
    if code not in supported:
        raise InvalidInput(
            f"language {language!r} is not supported by model {model_name!r}",
            param="language",
            code="unsupported_language",
        )
    return code
