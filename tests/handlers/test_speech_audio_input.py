"""Speech handlers' shared input code: decoding every format to 16 kHz mono, split points
in pauses, Whisper token helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from handlers.base import InvalidInput
from handlers.speech.audio import (
    audio_duration,
    chunk_ranges,
    decode_audio,
    find_split_points,
)
from tests.handlers.speech_audio import (
    AUDIO_FORMATS,
    tone,
)

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
