"""faster-whisper's batched pipeline, with the windows split into segments our way and the
temperature ladder the batched pipeline lacks.

* ``BatchedInferencePipeline.forward`` splits each window's tokens as the sequential loop
  does, which drops an unfinished last segment (the sequential loop decodes it again from
  the next seek; a batched window has no next seek): on continuous speech that lost the last
  seconds of some windows. :class:`WindowPipeline` keeps it
  (:func:`~handlers.speech.windows.window_pieces`).
* ``BatchedInferencePipeline`` decodes at the first temperature only (its ``transcribe``
  keeps ``temperature[:1]``, and even that one is not sampled: CTranslate2 samples only with
  ``sampling_topk=0``). :meth:`WindowPipeline.generate_segment_batched` decodes every window
  at the first temperature of :attr:`WindowPipeline.temperatures` (beam search at 0), then
  again, hotter (sampling ``best_of`` candidates, as faster-whisper's sequential
  ``generate_with_fallback`` does), only the windows the shared fallback policy marks
  (:func:`~handlers.speech.fallback.needs_retry`, the policy of ``WhisperASR`` too); a
  window keeps its most likely result (:func:`~handlers.speech.fallback.more_likely`).

Everything else (batched encoding, language detection per window, word alignment) is
faster-whisper's.
"""

from __future__ import annotations

from math import ceil

from faster_whisper import BatchedInferencePipeline
from faster_whisper.transcribe import get_compression_ratio

from handlers.base import check_cancelled
from handlers.speech.fallback import more_likely, needs_retry
from handlers.speech.windows import TIME_PRECISION, window_pieces


class WindowPipeline(BatchedInferencePipeline):
    """One instance per model, used by one thread at a time (the model's window batcher, or
    the caller of a handler outside a worker): set :attr:`temperatures` (and
    :attr:`cancel_event`, checked before each hotter retry) before ``transcribe``;
    :attr:`used_temperatures` then holds the temperature each window's result came from, and
    :attr:`tries` how many temperatures each window was decoded at."""

    def __init__(self, model):
        super().__init__(model)
        self.temperatures: tuple[float, ...] = (0.0,)
        self.cancel_event = None  # checked before each hotter retry (set with temperatures)
        self.used_temperatures: list[float] = []
        self.tries: list[int] = []

    def generate_segment_batched(self, features, tokenizer, options):
        prompt = self.model.get_prompt(
            tokenizer,
            previous_tokens=(
                tokenizer.encode(options.initial_prompt)
                if options.initial_prompt is not None
                else []
            ),
            without_timestamps=options.without_timestamps,
            hotwords=options.hotwords,
        )
        max_length = self.model.max_length
        if options.max_new_tokens is not None:
            max_length = min(max_length, len(prompt) + options.max_new_tokens)
        encoder_output = self.model.encode(features)
        prompts = [list(prompt) for _ in range(features.shape[0])]
        if options.multilingual:
            at = prompt.index(tokenizer.language)
            detected = self.model.model.detect_language(encoder_output)
            for row, languages in enumerate(detected):
                prompts[row][at] = tokenizer.tokenizer.token_to_id(languages[0][0])

        results: list[dict | None] = [None] * len(prompts)
        rows = list(range(len(prompts)))
        self.tries = [0] * len(prompts)
        encoded = encoder_output
        for temperature in self.temperatures:
            if rows != list(range(len(prompts))):  # a retry: encode only the windows retried
                check_cancelled(self.cancel_event)
                encoded = self.model.encode(features[rows])
            outputs = self._generate(
                encoded, [prompts[r] for r in rows], options, temperature, max_length
            )
            for row, output in zip(rows, outputs, strict=True):
                self.tries[row] += 1
                kept = results[row]
                if kept is None or more_likely(output["avg_logprob"], kept["avg_logprob"]):
                    results[row] = output
            rows = [r for r in rows if _retry(results[r])]
            if not rows:
                break
        self.used_temperatures = [result["temperature"] for result in results]
        return encoder_output, results

    def _generate(
        self, encoded, prompts, options, temperature: float, max_length: int
    ) -> list[dict]:
        """One CTranslate2 ``generate`` call over ``prompts`` (rows of ``encoded``): beam
        search at temperature 0, else ``best_of`` sampled candidates (the most likely kept)."""
        if temperature > 0:
            search = dict(
                beam_size=1,
                num_hypotheses=options.best_of,
                sampling_topk=0,
                sampling_temperature=temperature,
            )
        else:
            search = dict(beam_size=options.beam_size, patience=options.patience)
        results = self.model.model.generate(
            encoded,
            prompts,
            length_penalty=options.length_penalty,
            max_length=max_length,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            **search,
        )
        outputs = []
        for result in results:
            length = len(result.sequences_ids[0])
            total = result.scores[0] * (length**options.length_penalty)
            outputs.append(
                dict(
                    avg_logprob=total / (length + 1),
                    no_speech_prob=result.no_speech_prob,
                    tokens=result.sequences_ids[0],
                    temperature=float(temperature),
                )
            )
        return outputs

    def forward(self, features, tokenizer, chunks_metadata, options):
        encoder_output, outputs = self.generate_segment_batched(features, tokenizer, options)
        segmented, sizes = [], []
        for chunk, output in zip(chunks_metadata, outputs, strict=True):
            offset, duration = chunk["offset"], chunk["duration"]
            sizes.append(int(ceil(duration) * self.model.frames_per_second))
            tokens = output["tokens"]
            pieces = []
            for first, last, start, end in window_pieces(
                tokens, tokenizer.timestamp_begin, tokenizer.eot, duration
            ):
                text_tokens = [t for t in tokens[first:last] if t < tokenizer.eot]
                text = tokenizer.decode(text_tokens)
                if not text.strip():
                    continue
                pieces.append(
                    dict(
                        text=text,
                        avg_logprob=output["avg_logprob"],
                        no_speech_prob=output["no_speech_prob"],
                        tokens=tokens[first:last],
                        start=offset + start,
                        end=offset + max(end, start + TIME_PRECISION),
                        compression_ratio=get_compression_ratio(text),
                        seek=int(offset * self.model.frames_per_second),
                    )
                )
            segmented.append(pieces)
        if options.word_timestamps:
            self.last_speech_timestamp = self.model.add_word_timestamps(
                segmented,
                tokenizer,
                encoder_output,
                sizes,
                options.prepend_punctuations,
                options.append_punctuations,
                self.last_speech_timestamp,
            )
        return segmented


def _retry(result: dict) -> bool:
    return needs_retry(result["avg_logprob"], result["no_speech_prob"])
