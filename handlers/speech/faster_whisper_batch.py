"""faster-whisper's batched pipeline, with the windows split into segments our way.

``BatchedInferencePipeline.forward`` splits each window's tokens as the sequential loop does,
which drops an unfinished last segment (the sequential loop decodes it again from the next
seek; a batched window has no next seek): on continuous speech that lost the last seconds of
some windows. :class:`WindowPipeline` keeps it (:func:`~handlers.speech.windows.window_pieces`)
and leaves everything else (batched encoding and beam search,
word alignment) to faster-whisper.
"""

from __future__ import annotations

from math import ceil

from faster_whisper import BatchedInferencePipeline
from faster_whisper.transcribe import get_compression_ratio

from handlers.speech.windows import TIME_PRECISION, window_pieces


class WindowPipeline(BatchedInferencePipeline):
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
