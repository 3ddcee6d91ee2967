"""Audio in: every supported format decodes to 16 kHz mono s16le; bad input gets the right error."""

from __future__ import annotations

import io
import math
import os
import random
import struct
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from lifeline import audio
from lifeline.audio import (
    AudioError,
    AudioLimits,
    AudioTooLarge,
    AudioTooLong,
    BadWavHeader,
    EmptyAudio,
    NotAudio,
    OpusPacketDecoder,
    SilentAudio,
    TruncatedAudio,
    UndecodableAudio,
)
from lifeline.domain import PermanentError

FREQ = 440.0


def tone(rate: int, seconds: float, *, freq: float = FREQ, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def make_wav(
    samples: np.ndarray,
    rate: int,
    *,
    bits: int = 16,
    float_format: bool = False,
    extensible: bool = False,
    declared_data: int | None = None,
    extra_chunks: bytes = b"",
) -> bytes:
    """A WAV file written independently of lifeline.audio. ``samples`` is (frames,) or (frames, channels)."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    channels = frames.shape[1]
    width = bits // 8
    if float_format:
        data = frames.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.clip(np.round(frames * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.clip(np.round(frames * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")
        data = ints.reshape(-1, 1).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = float(1 << (bits - 1))
        dtype = {16: "<i2", 32: "<i4"}[bits]
        data = np.clip(np.round(frames * scale), -scale, scale - 1).astype(dtype).tobytes()
    tag = 3 if float_format else 1
    block = channels * width
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
        fmt += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + struct.pack("<H", tag) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(data) if declared_data is None else declared_data
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + extra_chunks
        + b"data"
        + struct.pack("<I", size)
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body) - 4 + len(data)) + body + data


def pcm_array(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0


def dominant_frequency(pcm: bytes, rate: int = 16000) -> float:
    x = pcm_array(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def rms_of(pcm: bytes) -> float:
    x = pcm_array(pcm)
    return float(np.sqrt(np.mean(x * x)))


def encode(container: str, codec: str, rate: int, channels: int, seconds: float, **options: Any) -> bytes:
    """A compressed file made with PyAV's encoders (FFmpeg's libmp3lame, libopus, aac, flac, vorbis)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, options=options)
        stream.layout = "stereo" if channels == 2 else "mono"
        ctx = stream.codec_context
        fmt = ctx.format.name if ctx.format else "fltp"
        samples = _as_format(tone(rate, seconds), fmt)
        frame_size = ctx.frame_size or 1024
        pts = 0
        for start in range(0, len(samples), frame_size):
            part = samples[start : start + frame_size]
            planes = np.tile(part, (channels, 1))
            array = planes if fmt.endswith("p") else planes.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=fmt, layout=stream.layout)
            frame.sample_rate = rate
            frame.pts = pts
            pts += len(part)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _as_format(x: np.ndarray, fmt: str) -> np.ndarray:
    base = fmt.rstrip("p")
    if base in ("flt", "dbl"):
        return x.astype(np.float32 if base == "flt" else np.float64)
    bits = {"s16": 16, "s32": 32}[base]
    return np.round(x * (2 ** (bits - 1) - 1)).astype(np.int16 if bits == 16 else np.int32)


def pipe_with(data: bytes) -> io.BufferedReader:
    """The read end of a pipe that a thread fills with ``data``: a source that cannot seek."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    threading.Thread(target=write, daemon=True).start()
    return os.fdopen(read_fd, "rb")


# ---------------------------------------------------------------------------------------------
# WAV: every width, rate and channel count


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize(
    ("bits", "float_format"), [(8, False), (16, False), (24, False), (32, False), (32, True)]
)
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_any_rate_width_and_channels_becomes_16k_mono(
    rate: int, bits: int, float_format: bool, channels: int
) -> None:
    mono = tone(rate, 1.0)
    samples = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    data = make_wav(
        samples, rate, bits=bits, float_format=float_format, extensible=bits > 16 and channels > 1
    )

    decoded = audio.decode(data)

    assert decoded.info.sample_rate == rate
    assert decoded.info.channels == channels
    assert abs(decoded.samples - 16000) <= 16  # one second, give or take the resampler's edge
    assert dominant_frequency(decoded.pcm) == pytest.approx(FREQ, abs=2.0)
    tolerance = 0.03 if bits == 8 else 0.01  # 8-bit samples are coarse
    assert rms_of(decoded.pcm) == pytest.approx(0.5 / math.sqrt(2), rel=tolerance)


def test_wav_16k_mono_16bit_passes_through_bit_exact() -> None:
    rng = np.random.default_rng(7)
    ints = rng.integers(-20000, 20000, size=16000 * 3, dtype=np.int16)
    data = make_wav(ints.astype(np.float64) / 32768.0, 16000)
    assert audio.decode(data).pcm == ints.astype("<i2").tobytes()


def test_stereo_is_downmixed_by_averaging_the_channels() -> None:
    left = tone(16000, 1.0, amplitude=0.8)
    decoded = audio.decode(make_wav(np.stack([left, np.zeros_like(left)], axis=1), 16000))
    assert rms_of(decoded.pcm) == pytest.approx(0.4 / math.sqrt(2), rel=0.01)


def test_six_channel_float64_extensible_wav() -> None:
    samples = np.stack([tone(48000, 0.5)] * 6, axis=1)
    decoded = audio.decode(make_wav(samples, 48000, bits=64, float_format=True, extensible=True))
    assert decoded.info.codec == "pcm_f64le"
    assert decoded.info.channels == 6
    assert abs(decoded.duration - 0.5) < 0.002


def test_wav_with_extra_chunks_before_the_data() -> None:
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size: padded
    decoded = audio.decode(make_wav(tone(16000, 1.0), 16000, extra_chunks=extra))
    assert decoded.samples == 16000


def test_mu_law_wav_goes_through_ffmpeg() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_mulaw", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            (tone(8000, 1.0) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    decoded = audio.decode(buf.getvalue())
    assert decoded.info.codec == "pcm_mulaw"
    assert abs(decoded.duration - 1.0) < 0.01
    assert dominant_frequency(decoded.pcm) == pytest.approx(FREQ, abs=2.0)


# ---------------------------------------------------------------------------------------------
# Compressed formats


@pytest.mark.parametrize(
    ("container", "codec", "rate", "channels", "expect_container", "expect_codec"),
    [
        ("mp3", "libmp3lame", 44100, 2, "mp3", "mp3"),
        ("flac", "flac", 48000, 2, "flac", "flac"),
        ("ogg", "libopus", 48000, 1, "ogg", "opus"),
        ("ogg", "vorbis", 44100, 2, "ogg", "vorbis"),
        ("ipod", "aac", 44100, 2, "mp4", "aac"),  # .m4a
        ("adts", "aac", 22050, 1, "aac", "aac"),  # raw .aac
        ("webm", "libopus", 48000, 2, "webm", "opus"),
    ],
)
def test_compressed_formats_decode_to_16k_mono(
    container: str, codec: str, rate: int, channels: int, expect_container: str, expect_codec: str
) -> None:
    options = {"strict": "experimental"} if codec == "vorbis" else {}
    data = encode(container, codec, rate, channels, 2.0, **options)

    decoded = audio.decode(data)

    assert decoded.info.container == expect_container
    assert decoded.info.codec == expect_codec
    assert abs(decoded.duration - 2.0) < 0.1  # encoder delay and padding
    assert dominant_frequency(decoded.pcm) == pytest.approx(FREQ, abs=2.0)
    assert rms_of(decoded.pcm) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)


def test_a_stream_that_changes_rate_and_channels_midway() -> None:
    joined = encode("adts", "aac", 44100, 1, 1.0) + encode("adts", "aac", 16000, 2, 1.0)
    decoded = audio.decode(joined)
    assert abs(decoded.duration - 2.0) < 0.2
    assert dominant_frequency(decoded.pcm) == pytest.approx(FREQ, abs=2.0)


# ---------------------------------------------------------------------------------------------
# Sources: bytes, paths, file objects, pipes


def test_bytes_path_file_object_and_pipe_give_the_same_pcm(tmp_path: Path) -> None:
    data = make_wav(tone(44100, 1.5), 44100)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    expected = audio.decode(data).pcm

    assert audio.decode(path).pcm == expected
    assert audio.decode(str(path)).pcm == expected
    assert audio.decode(bytearray(data)).pcm == expected
    assert audio.decode(memoryview(data)).pcm == expected
    with path.open("rb") as f:
        assert audio.decode(f).pcm == expected

    prefixed = io.BytesIO(b"JUNK" + data)
    prefixed.seek(4)  # a file object is read from where it stands
    assert audio.decode(prefixed).pcm == expected

    with pipe_with(data) as r:
        assert not r.seekable()
        assert audio.decode(r).pcm == expected


def test_a_compressed_file_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "a.mp3"
    path.write_bytes(encode("mp3", "libmp3lame", 44100, 1, 1.0))
    assert abs(audio.decode(path).duration - 1.0) < 0.1


def test_missing_file_is_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(EmptyAudio):
        audio.decode(tmp_path / "nope.wav")


async def test_decode_async_runs_off_the_event_loop() -> None:
    decoded = await audio.decode_async(make_wav(tone(22050, 0.5), 22050))
    assert abs(decoded.duration - 0.5) < 0.002


def test_chunks_are_whole_seconds_and_decode_into_a_sink(tmp_path: Path) -> None:
    data = make_wav(tone(16000, 3.5), 16000)
    with audio.open_audio(data) as stream:
        sizes = [len(c) for c in stream]
    assert sizes == [32000, 32000, 32000, 16000]
    sink = io.BytesIO()
    info = audio.decode_into(data, sink)
    assert info.codec == "pcm_s16le"
    assert sink.getvalue() == audio.decode(data).pcm


def test_an_hour_from_a_file_is_decoded_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "hour.wav"
    seconds = 3600
    data_bytes = seconds * 16000 * 2
    speech = (tone(16000, 1.0) * 32767).astype("<i2").tobytes()
    with path.open("wb") as f:
        f.write(audio.wav_header(data_bytes))
        f.write(speech)
        f.truncate(44 + data_bytes)  # the rest is silence (a sparse file: quick to make)

    class Counter(io.RawIOBase):
        total = 0

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.total += len(b)
            return len(b)

    sink = Counter()
    tracemalloc.start()
    try:
        audio.decode_into(path, sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.total == data_bytes
    assert peak < 8 << 20  # a few chunks, not 115 MB


# ---------------------------------------------------------------------------------------------
# Bad input


def test_every_audio_error_is_permanent_with_a_status() -> None:
    for cls, status in [
        (NotAudio, 415),
        (UndecodableAudio, 422),
        (BadWavHeader, 422),
        (TruncatedAudio, 422),
        (EmptyAudio, 422),
        (SilentAudio, 422),
        (AudioTooLarge, 413),
        (AudioTooLong, 413),
    ]:
        error = cls("x")
        assert isinstance(error, PermanentError)
        assert error.http_status == status
        assert error.reason


@pytest.mark.parametrize(
    "data",
    [
        b"this is a text file, not audio\n" * 50,
        b"\x89PNG\r\n\x1a\n" + bytes(2000),
        b"%PDF-1.7\n" + bytes(500),
        b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/secret.mp3\n",  # a playlist is never followed
        b"ffconcat version 1.0\nfile /etc/passwd\n",
    ],
    ids=["text", "png", "pdf", "m3u", "ffconcat"],
)
def test_not_audio_is_415(data: bytes) -> None:
    with pytest.raises(NotAudio) as caught:
        audio.decode(data)
    assert caught.value.http_status == 415
    assert "not a recognised audio format" in str(caught.value)


def test_random_bytes_are_refused() -> None:
    rng = random.Random(20261128)
    for _ in range(20):
        data = bytes(rng.randrange(256) for _ in range(4096))
        with pytest.raises(AudioError) as caught:
            audio.decode(data)
        assert caught.value.http_status in (415, 422)  # most are not recognised at all: 415


@pytest.mark.parametrize(
    "data",
    [
        b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 20,
        b"OggS" + bytes(range(256)) * 20,
        b"fLaC" + bytes(range(256)) * 20,
        b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 20,
        b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 20,
    ],
    ids=["mp3", "ogg", "flac", "m4a", "webm"],
)
def test_a_known_format_with_garbage_inside_is_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableAudio) as caught:
        audio.decode(data)
    assert caught.value.http_status == 422
    assert "cannot read this" in str(caught.value)


def test_a_truncated_mp3_keeps_what_decodes() -> None:
    data = encode("mp3", "libmp3lame", 44100, 1, 3.0)
    decoded = audio.decode(data[: len(data) // 2])
    assert 1.0 < decoded.duration < 2.0


def test_empty_input() -> None:
    with pytest.raises(EmptyAudio, match="0 bytes"):
        audio.decode(b"")
    with pytest.raises(EmptyAudio, match="no audio samples"):
        audio.decode(audio.wav_header(0))
    with pytest.raises(EmptyAudio, match=r"at least 0\.1 s"):
        audio.decode(make_wav(tone(16000, 0.05), 16000))


def test_silence_is_refused_unless_the_check_is_off() -> None:
    silence = make_wav(np.zeros(16000), 16000)
    with pytest.raises(SilentAudio) as caught:
        audio.decode(silence)
    assert caught.value.http_status == 422
    hiss = make_wav(np.random.default_rng(1).normal(0, 10**-3.6, 32000), 16000)  # about -72 dBFS
    with pytest.raises(SilentAudio):
        audio.decode(hiss)
    assert audio.decode(silence, AudioLimits(silence_dbfs=None)).samples == 16000
    quiet_speech_level = make_wav(tone(16000, 1.0, amplitude=0.01), 16000)  # about -43 dBFS
    assert audio.decode(quiet_speech_level).peak_dbfs == pytest.approx(-43.0, abs=0.5)


def test_a_short_sound_in_long_silence_is_not_silent() -> None:
    samples = np.zeros(16000 * 10)
    samples[50000:51600] = tone(16000, 0.1)
    assert audio.decode(make_wav(samples, 16000)).duration == 10.0


def test_level_helpers() -> None:
    loud = (tone(16000, 1.0, amplitude=1.0) * 32767).astype("<i2").tobytes()
    assert audio.rms(loud) == pytest.approx(32767 / math.sqrt(2), rel=0.001)
    assert audio.peak_dbfs(loud) == pytest.approx(-3.01, abs=0.05)
    assert audio.is_silent(bytes(3200))
    assert not audio.is_silent(loud)
    assert audio.rms(b"") == 0.0
    assert len(audio.window_rms(bytes(2 * 1700))) == 2  # 100 ms windows, the tail its own


def test_a_wav_header_that_lies_about_its_length_is_refused() -> None:
    one_second = make_wav(tone(16000, 1.0), 16000, declared_data=10 * 32000)
    with pytest.raises(TruncatedAudio) as caught:
        audio.decode(one_second)
    assert caught.value.http_status == 422
    assert caught.value.reason == "truncated"
    assert "declares 320000 bytes" in str(caught.value)
    assert "(10.00 s)" in str(caught.value)
    assert "(1.00 s)" in str(caught.value)

    with pipe_with(one_second) as r, pytest.raises(TruncatedAudio):
        audio.decode(r)


@pytest.mark.parametrize("sentinel", [0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF])
def test_streaming_writers_unknown_length_is_read_to_the_end(sentinel: int) -> None:
    data = make_wav(tone(22050, 1.0), 22050, declared_data=sentinel)  # espeak-ng, sox | , ffmpeg pipe:
    assert abs(audio.decode(data).duration - 1.0) < 0.002


def test_a_declared_length_shorter_than_the_file_is_obeyed() -> None:
    data = make_wav(tone(16000, 1.0), 16000, declared_data=16000) + b"LIST\x04\x00\x00\x00junk"
    assert audio.decode(data).samples == 8000


def _fmt_wav(fmt: bytes, data: bytes = bytes(3200)) -> bytes:
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (struct.pack("<HHIIHH", 1, 0, 16000, 0, 0, 16), "0 channels"),
        (struct.pack("<HHIIHH", 1, 1, 100, 200, 2, 16), "100 Hz"),
        (struct.pack("<HHIIHH", 1, 2, 16000, 64000, 3, 16), "block size 3"),
        (struct.pack("<HHIIHH", 1, 1, 16000, 80000, 5, 40), "unsupported WAV sample layout"),
        (struct.pack("<HHIIHH", 3, 1, 16000, 32000, 2, 16), "unsupported WAV sample layout"),
        (b"\x01\x00", "'fmt ' chunk of 2 bytes"),
    ],
)
def test_malformed_wav_headers(fmt: bytes, message: str) -> None:
    with pytest.raises(BadWavHeader, match=message):
        audio.decode(_fmt_wav(fmt))


def test_wav_chunks_out_of_order_or_missing() -> None:
    no_data = b"RIFF" + struct.pack("<I", 28) + b"WAVEfmt " + struct.pack("<I", 16)
    no_data += struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    with pytest.raises(BadWavHeader, match="without a 'data' chunk"):
        audio.decode(no_data)
    data_first = b"RIFF" + struct.pack("<I", 12) + b"WAVEdata" + struct.pack("<I", 0)
    with pytest.raises(BadWavHeader, match="before its 'fmt ' chunk"):
        audio.decode(data_first)
    big_chunk = b"RIFF" + struct.pack("<I", 100) + b"WAVEjunk" + struct.pack("<I", 1_000_000) + bytes(10)
    with pytest.raises(TruncatedAudio):
        audio.decode(big_chunk)


def test_a_12_bit_wav_in_16_bit_slots_is_accepted() -> None:
    data = bytearray(make_wav(tone(16000, 1.0), 16000))
    data[34:36] = struct.pack("<H", 12)  # bits per sample
    assert audio.decode(bytes(data)).samples == 16000


# ---------------------------------------------------------------------------------------------
# Limits


def test_too_large(tmp_path: Path) -> None:
    data = make_wav(tone(16000, 1.0), 16000)
    limits = AudioLimits(max_bytes=1000)
    with pytest.raises(AudioTooLarge) as caught:
        audio.decode(data, limits)
    assert caught.value.http_status == 413
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    with pytest.raises(AudioTooLarge):
        audio.decode(path, limits)
    with pipe_with(data) as r, pytest.raises(AudioTooLarge):
        audio.decode(r, limits)


def test_too_long_wav_is_refused_from_its_header() -> None:
    with pytest.raises(AudioTooLong, match="lasts 5 s; the limit is 2 s") as caught:
        audio.decode(make_wav(tone(16000, 5.0), 16000), AudioLimits(max_seconds=2))
    assert caught.value.http_status == 413


def test_too_long_compressed_audio_is_refused_while_decoding() -> None:
    data = encode("mp3", "libmp3lame", 44100, 1, 5.0)
    with pytest.raises(AudioTooLong, match="more than 3 s"):
        audio.decode(data, AudioLimits(max_seconds=2.5))


# ---------------------------------------------------------------------------------------------
# WAV out


def test_wav_writer_round_trips() -> None:
    pcm = (tone(16000, 0.7) * 20000).astype("<i2").tobytes()
    wav = audio.to_wav(pcm)
    assert wav[:4] == b"RIFF"
    assert wav[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", wav[40:44])[0] == len(pcm)
    assert audio.decode(wav).pcm == pcm
    streamed = b"".join(audio.iter_wav([pcm[:1000], pcm[1000:]], len(pcm)))
    assert streamed == wav
    with pytest.raises(ValueError, match="promised"):
        b"".join(audio.iter_wav([pcm], len(pcm) + 2))
    with pytest.raises(ValueError, match="cannot hold"):
        audio.wav_header(-1)


def test_sniffing() -> None:
    assert audio.sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert audio.sniff(b"\xff\xfb\x90\x00") == "mp3"
    assert audio.sniff(b"\xff\xf1\x50\x80") == "aac"
    assert audio.sniff(b"RIFF\x00\x00\x00\x00AVI LIST") is None
    assert audio.sniff(b"") is None


# ---------------------------------------------------------------------------------------------
# Raw Opus packets (Omi)


def opus_packets(seconds: float, rate: int = 16000) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = rate
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = 32000
    enc.open()
    pcm = (tone(rate, seconds) * 32767).astype(np.int16)
    step = rate // 50  # 20 ms frames, as Omi sends them
    packets: list[bytes] = []
    for i in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + step].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        packets += [bytes(p) for p in enc.encode(frame)]
    packets += [bytes(p) for p in enc.encode(None)]
    return packets


def test_raw_opus_packets_decode_to_16k_mono() -> None:
    packets = opus_packets(2.0)
    decoder = OpusPacketDecoder()
    pcm = b"".join(decoder.decode(p) for p in packets) + decoder.flush()
    assert decoder.packets == len(packets)
    assert abs(len(pcm) / 32000 - 2.0) < 0.05
    assert dominant_frequency(pcm) == pytest.approx(FREQ, abs=2.0)
    assert rms_of(pcm) == pytest.approx(0.5 / math.sqrt(2), rel=0.15)


def test_opus_empty_packet_is_skipped_and_a_bad_one_is_undecodable() -> None:
    packets = opus_packets(0.5)
    decoder = OpusPacketDecoder()
    assert decoder.decode(b"") == b""
    with pytest.raises(UndecodableAudio):
        decoder.decode(b"\xff\xff\xfe garbage")
    pcm = b"".join(decoder.decode(p) for p in packets)  # the stream goes on after a bad packet
    assert len(pcm) > 0.4 * 32000


# ---------------------------------------------------------------------------------------------
# Raw PCM of any format, piece by piece (WebSocket streams)


def test_pcm_converter_passes_16k_mono_through_and_keeps_half_samples() -> None:
    pcm = (tone(16_000, 0.5) * 32767).astype("<i2").tobytes()
    converter = audio.PcmConverter()
    out = converter.convert(pcm[:1001]) + converter.convert(pcm[1001:])
    assert out == pcm
    assert converter.flush() == b""


@pytest.mark.parametrize(
    ("rate", "width", "channels"), [(44_100, 2, 2), (48_000, 3, 1), (8000, 1, 1), (16_000, 4, 6)]
)
def test_pcm_converter_any_format_in_odd_pieces(rate: int, width: int, channels: int) -> None:
    samples = tone(rate, 1.0)
    frames = np.repeat(samples.reshape(-1, 1), channels, axis=1)
    if width == 1:
        data = np.clip(frames * 127 + 128, 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.rint(frames * 8388607).astype("<i4").reshape(-1)
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = 32767 if width == 2 else 2147483647
        data = np.rint(frames * scale).astype("<i2" if width == 2 else "<i4").tobytes()
    converter = audio.PcmConverter(rate, width, channels)
    out = b"".join(converter.convert(data[i : i + 997]) for i in range(0, len(data), 997)) + converter.flush()
    assert len(out) / audio.BYTES_PER_SECOND == pytest.approx(1.0, abs=0.01)
    assert audio.peak_dbfs(out) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.5)


@pytest.mark.parametrize(("rate", "width", "channels"), [(999, 2, 1), (16_000, 5, 1), (16_000, 2, 0)])
def test_pcm_converter_refuses_impossible_formats(rate: int, width: int, channels: int) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        audio.PcmConverter(rate, width, channels)


def test_the_silence_threshold_is_named() -> None:
    assert audio.SILENCE_DBFS == -50.0
    quiet = (np.full(1600, 0.002) * 32767).astype("<i2").tobytes()  # -54 dBFS
    assert audio.is_silent(quiet)
    assert not audio.is_silent(quiet, threshold_dbfs=-60.0)


@pytest.mark.parametrize(("rate", "width", "channels"), [(16_000, 2, 1), (44_100, 2, 2), (48_000, 3, 1)])
def test_pcm_converter_flushed_between_conversations_goes_on_with_its_half_frame(
    rate: int, width: int, channels: int
) -> None:
    """A stream's conversation closes (its resampler is flushed) with an incomplete frame held:
    that frame's bytes start the next piece, and the converter goes on converting."""
    samples = tone(rate, 1.0)
    frames = np.repeat(samples.reshape(-1, 1), channels, axis=1)
    if width == 3:
        ints = np.rint(frames * 8388607).astype("<i4").reshape(-1)
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = np.rint(frames * 32767).astype("<i2").tobytes()
    cut = len(data) // 2 + 1  # inside a frame
    converter = audio.PcmConverter(rate, width, channels)
    first = converter.convert(data[:cut]) + converter.flush()
    second = converter.convert(data[cut:]) + converter.flush()
    assert (len(first) + len(second)) / audio.BYTES_PER_SECOND == pytest.approx(1.0, abs=0.01)
    if rate == 16_000:
        assert first + second == data
    for piece in (first, second):
        assert audio.peak_dbfs(piece) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.5)
