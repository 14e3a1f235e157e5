"""What the audio benchmarks share: the model, the speech files (espeak-ng sentences with
pauses) and the figures (speed beside WER and recall)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

MODEL = "Systran/faster-whisper-tiny.en"
SECONDS = 600.0
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Every morning the baker opens his shop at six o'clock.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "Please remember to close the window before you leave the house.",
    "Our team will meet on Thursday to review the quarterly budget.",
    "The museum downtown has a new exhibition about ancient Egypt.",
    "He forgot his umbrella at the station and got wet on the way home.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def recall(reference: list[str], text: str) -> float:
    found = Counter(words(text))
    expected = Counter(reference)
    return sum(min(n, found[w]) for w, n in expected.items()) / sum(expected.values())


def build_audio(
    folder: Path, seconds: float = SECONDS, seed: int = 0, name: str = "speech-10min"
) -> tuple[Path, float, list[str]]:
    """Sentences by espeak-ng in turn (from sentence ``seed``), 0.5-1.3 s pauses, as 16 kHz
    mono WAV."""
    import wave

    import numpy as np

    from handlers.speech.audio import decode_audio

    clips = []
    for i, sentence in enumerate(SENTENCES):
        path = folder / f"s{i}.wav"
        if not path.exists():
            subprocess.run(
                ["espeak-ng", "-w", str(path), sentence], check=True, capture_output=True
            )
        clips.append(decode_audio(path))
    rng = np.random.default_rng(seed)
    pieces, reference, total, i = [], [], 0, seed
    while total < seconds * 16000:
        pause = np.zeros(int(rng.uniform(0.5, 1.3) * 16000), np.float32)
        pieces += [clips[i % len(clips)], pause]
        reference += words(SENTENCES[i % len(clips)])
        total += len(clips[i % len(clips)]) + len(pause)
        i += 1
    audio = np.concatenate(pieces)
    out = folder / f"{name}.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out, len(audio) / 16000, reference


def figures(duration: float, wall: float, reference: list[str], text: str) -> dict:
    import jiwer

    return {
        "wall_s": round(wall, 2),
        "x_real_time": round(duration / wall, 2),
        "rtf": round(wall / duration, 4),
        "word_recall": round(recall(reference, text), 4),
        "wer": round(jiwer.wer(" ".join(reference), " ".join(words(text))), 4),
    }
