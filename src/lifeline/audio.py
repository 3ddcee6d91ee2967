"""Audio in: decode any supported upload to 16 kHz mono 16-bit PCM, validate it, and write WAV out.

Everything Lifeline transcribes is normalised to one format, ``PCM16K``: 16 kHz, mono, signed 16-bit
little-endian samples (what Friend-Lite clients stream and what Whisper wants).

Decoding is streaming: :func:`open_audio` reads its source in pieces and yields the PCM one second
at a time, so a one-hour upload read from a file is never held in memory at all, and one passed as
``bytes`` is not held a second time (the output, 115 MB for an hour, is the only other copy, and
:func:`decode_into` writes even that straight to a file or the store).

Two decoders:

- WAV with PCM or float samples (8/16/24/32-bit integers, 32/64-bit floats, any rate and channel
  count, ``WAVE_FORMAT_EXTENSIBLE`` included) is parsed here. The header is checked against the
  file: a ``data`` chunk that claims more bytes than the file holds is a header that lies about
  the length (a truncated upload) and is refused, except for the "unknown length" values that
  streaming writers (espeak-ng, sox to a pipe, ffmpeg) put there on purpose.
- Everything else (MP3, AAC/M4A, Ogg Vorbis/Opus, FLAC, WebM/Matroska, AIFF, and WAV with other
  codecs) goes through PyAV. The container format is recognised here by its magic bytes and named
  to PyAV, which therefore never probes: an upload cannot make FFmpeg open a playlist or a
  concat script that would read other files or URLs.

Bad input raises an :class:`AudioError`, a :class:`~lifeline.domain.PermanentError` (retrying
cannot help) carrying a short ``reason`` code and the HTTP status an upload endpoint should answer
with (415 not audio, 422 undecodable/empty/silent, 413 too large/too long).

Streams: :class:`PcmConverter` turns raw PCM of any format into ``PCM16K`` piece by piece, and
:class:`OpusPacketDecoder` the raw Opus packets (no container) that Omi devices send.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Self

import numpy as np
import numpy.typing as npt

from lifeline.domain import PermanentError

if TYPE_CHECKING:
    import av.audio.resampler

TARGET_RATE: Final = 16_000
TARGET_WIDTH: Final = 2  # bytes per sample
TARGET_CHANNELS: Final = 1
BYTES_PER_SECOND: Final = TARGET_RATE * TARGET_WIDTH * TARGET_CHANNELS

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]

# ---------------------------------------------------------------------------------------------
# Errors


class AudioError(PermanentError):
    """Input that cannot become audio worth transcribing. ``reason`` is a stable short code."""

    reason: str = "undecodable"
    http_status: int = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAudio(AudioError):
    """Not a recognised audio format at all (or a container without an audio stream)."""

    reason = "not_audio"
    http_status = 415


class UndecodableAudio(AudioError):
    """A recognised format whose contents cannot be decoded."""

    reason = "undecodable"
    http_status = 422


class BadWavHeader(UndecodableAudio):
    """A WAV header that is malformed or inconsistent with itself."""

    reason = "bad_header"


class TruncatedAudio(BadWavHeader):
    """A WAV whose header declares more audio than the file holds: it lies about its length."""

    reason = "truncated"


class EmptyAudio(AudioError):
    """No audio at all, or less than the configured minimum."""

    reason = "empty"
    http_status = 422


class SilentAudio(AudioError):
    """Audio that holds nothing but silence."""

    reason = "silent"
    http_status = 422


class AudioTooLarge(AudioError):
    """The upload is larger than the configured limit (bytes)."""

    reason = "too_large"
    http_status = 413


class AudioTooLong(AudioError):
    """The audio lasts longer than the configured limit (seconds)."""

    reason = "too_long"
    http_status = 413


# ---------------------------------------------------------------------------------------------
# Limits and results


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """What an upload may be. ``silence_dbfs=None`` turns the silent-only check off."""

    max_bytes: int = 1 << 30
    max_seconds: float = 4 * 3600.0
    min_seconds: float = 0.1
    silence_dbfs: float | None = -50.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_seconds <= 0 or self.min_seconds < 0:
            raise ValueError("audio limits must be positive")


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What the source was, before normalisation."""

    container: str  # "wav", "mp3", "ogg", "flac", "mp4", "webm", "aac", "aiff"
    codec: str  # "pcm_s16le", "mp3", "opus", "aac", ...
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """A whole decoded recording: 16 kHz mono s16le ``pcm``."""

    pcm: bytes
    info: AudioInfo
    peak_dbfs: float  # the loudest 100 ms window

    @property
    def samples(self) -> int:
        return len(self.pcm) // TARGET_WIDTH

    @property
    def duration(self) -> float:
        return self.samples / TARGET_RATE


# ---------------------------------------------------------------------------------------------
# Levels and silence

_WINDOW = TARGET_RATE // 10  # 100 ms
SILENCE_DBFS: Final = -50.0  # no 100 ms window louder than this: silence


def to_dbfs(rms_value: float) -> float:
    """An RMS on the int16 scale as dB relative to full scale (-inf for digital silence)."""
    return 20.0 * math.log10(rms_value / 32768.0) if rms_value > 0 else -math.inf


def rms(pcm: bytes) -> float:
    """Root mean square of s16le samples, on the int16 scale (0 for no samples)."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def window_rms(pcm: bytes, window: int = _WINDOW) -> npt.NDArray[np.float64]:
    """RMS of each ``window`` samples (100 ms at 16 kHz) of s16le audio; a short tail is its own window."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float64)
    if samples.size == 0:
        return np.zeros(0)
    full = samples.size // window * window
    parts = []
    if full:
        parts.append(np.sqrt(np.mean(np.square(samples[:full].reshape(-1, window)), axis=1)))
    if full < samples.size:
        parts.append(np.sqrt(np.mean(np.square(samples[full:]), keepdims=True)))
    return np.concatenate(parts)


def peak_dbfs(pcm: bytes) -> float:
    """The level of the loudest 100 ms window."""
    levels = window_rms(pcm)
    return to_dbfs(float(levels.max())) if levels.size else -math.inf


def is_silent(pcm: bytes, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """True when no 100 ms window of ``pcm`` is louder than ``threshold_dbfs``."""
    return peak_dbfs(pcm) < threshold_dbfs


# ---------------------------------------------------------------------------------------------
# WAV out


def wav_header(
    data_bytes: int, *, rate: int = TARGET_RATE, channels: int = 1, sample_width: int = 2
) -> bytes:
    """A canonical 44-byte PCM WAV header for ``data_bytes`` of samples."""
    if data_bytes < 0 or data_bytes > 0xFFFFFFFF - 36:
        raise ValueError(f"a WAV file cannot hold {data_bytes} bytes of audio")
    block_align = channels * sample_width
    return b"".join(
        (
            b"RIFF",
            struct.pack("<I", 36 + data_bytes),
            b"WAVE",
            b"fmt ",
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block_align, block_align, sample_width * 8),
            b"data",
            struct.pack("<I", data_bytes),
        )
    )


def to_wav(pcm: bytes, *, rate: int = TARGET_RATE, channels: int = 1, sample_width: int = 2) -> bytes:
    """``pcm`` (16 kHz mono s16le unless told otherwise) as a complete WAV file."""
    return wav_header(len(pcm), rate=rate, channels=channels, sample_width=sample_width) + bytes(pcm)


def iter_wav(chunks: Iterable[bytes], data_bytes: int, *, rate: int = TARGET_RATE) -> Iterator[bytes]:
    """Stream a 16-bit mono WAV file whose PCM arrives in ``chunks`` totalling ``data_bytes``."""
    yield wav_header(data_bytes, rate=rate)
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        yield chunk
    if sent != data_bytes:
        raise ValueError(f"WAV stream promised {data_bytes} bytes of audio and sent {sent}")


# ---------------------------------------------------------------------------------------------
# Recognising the container

_PYAV_DEMUXER = {
    "wav": "wav",
    "mp3": "mp3",
    "aac": "aac",
    "ogg": "ogg",
    "flac": "flac",
    "mp4": "mp4",
    "webm": "matroska",
    "aiff": "aiff",
}


def sniff(head: bytes) -> str | None:
    """The container of a file from its first bytes (at least 12), or None if not a known audio format."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # An MPEG audio frame sync. Layer bits 00 are ADTS (AAC); 01-11 are MPEG layers III-I.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


# ---------------------------------------------------------------------------------------------
# Decoding


_STREAMING_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})
_SNIFF_BYTES = 16
_SPOOL_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class _WavFormat:
    format_tag: int  # 1 PCM, 3 IEEE float
    channels: int
    rate: int
    bits: int
    block_align: int
    container_bytes: int  # bytes per sample as stored
    data_bytes: int | None  # None: until the end of the file


def open_audio(
    source: AudioSource, limits: AudioLimits | None = None, *, chunk_seconds: float = 1.0
) -> PcmStream:
    """Open ``source`` for decoding; iterate the result for 16 kHz mono s16le chunks.

    ``source`` is ``bytes``, a path, or a binary file object (read from its current position).
    Opening already recognises the format and checks the size (:class:`NotAudio`,
    :class:`AudioTooLarge`, :class:`BadWavHeader`, :class:`TruncatedAudio`); iteration raises
    :class:`AudioTooLong` as soon as the limit is passed and, after the last chunk,
    :class:`EmptyAudio` or :class:`SilentAudio`. Use it as a context manager, or exhaust it.
    """
    return PcmStream(source, limits or AudioLimits(), chunk_seconds=chunk_seconds)


def decode(source: AudioSource, limits: AudioLimits | None = None) -> DecodedAudio:
    """Decode a whole recording into memory (blocking; see :func:`decode_async`)."""
    with open_audio(source, limits) as stream:
        pcm = b"".join(stream)
        return DecodedAudio(pcm=pcm, info=stream.info, peak_dbfs=stream.peak_dbfs)


def decode_into(source: AudioSource, sink: IO[bytes], limits: AudioLimits | None = None) -> AudioInfo:
    """Decode ``source`` straight into ``sink`` (a file, a spool, a store writer); returns what it was.

    Nothing is held in memory beyond one chunk. If decoding fails half-way, ``sink`` holds a prefix:
    the caller discards it (ingest writes into a transaction it then rolls back).
    """
    with open_audio(source, limits) as stream:
        for chunk in stream:
            sink.write(chunk)
        return stream.info


async def decode_async(source: AudioSource, limits: AudioLimits | None = None) -> DecodedAudio:
    """:func:`decode` on a worker thread, so the event loop never waits for FFmpeg or numpy."""
    return await asyncio.to_thread(decode, source, limits)


class PcmStream:
    """An open source being decoded; see :func:`open_audio`."""

    def __init__(self, source: AudioSource, limits: AudioLimits, *, chunk_seconds: float = 1.0) -> None:
        self._limits = limits
        self._chunk_seconds = chunk_seconds
        self._file, self._owned, self._size = self._open_source(source, limits)
        self.samples = 0
        self._peak_rms = 0.0
        self._container: Any = None
        try:
            head = self._read_exact(_SNIFF_BYTES)
            self._file.seek(-len(head), io.SEEK_CUR)
            kind = sniff(head)
            if kind is None:
                if not head:
                    raise EmptyAudio("the upload is empty (0 bytes)")
                raise NotAudio("not a recognised audio format (WAV, MP3, M4A/AAC, Ogg, Opus, FLAC, WebM)")
            self._wav = self._parse_wav() if kind == "wav" else None
            if self._wav is not None:
                self.info = AudioInfo(
                    container="wav",
                    codec=_wav_codec_name(self._wav),
                    sample_rate=self._wav.rate,
                    channels=self._wav.channels,
                )
            else:
                self.info = self._open_pyav(kind)
        except BaseException:
            self.close()
            raise

    # -- the source ----------------------------------------------------------------------------

    @staticmethod
    def _open_source(source: AudioSource, limits: AudioLimits) -> tuple[IO[bytes], bool, int | None]:
        """A seekable binary file for ``source``, whether we must close it, and its size if known."""
        if isinstance(source, bytes | bytearray | memoryview):
            size = memoryview(source).nbytes
            if size > limits.max_bytes:
                raise AudioTooLarge(_too_large(size, limits))
            data = source if isinstance(source, bytes) else memoryview(source).cast("B")
            return io.BytesIO(data), True, size
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            try:
                opened = path.open("rb")
            except FileNotFoundError as e:
                raise EmptyAudio(f"no such audio file: {path}") from e
            size = os.fstat(opened.fileno()).st_size
            if size > limits.max_bytes:
                opened.close()
                raise AudioTooLarge(_too_large(size, limits))
            return opened, True, size
        f = source
        if f.seekable():
            start = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(start)
            if end - start > limits.max_bytes:
                raise AudioTooLarge(_too_large(end - start, limits))
            return io.BufferedReader(_Window(f, start)), False, end - start
        # Not seekable (a pipe, a socket): spool it (to disk past 16 MiB), counting as we go.
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        size = 0
        while block := f.read(1 << 20):
            size += len(block)
            if size > limits.max_bytes:
                spool.close()
                raise AudioTooLarge(_too_large(size, limits))
            spool.write(block)
        spool.seek(0)
        return spool, True, size

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            block = self._file.read(n)
            if not block:
                break
            parts.append(block)
            n -= len(block)
        return b"".join(parts)

    # -- WAV -----------------------------------------------------------------------------------

    def _parse_wav(self) -> _WavFormat | None:
        """Walk the RIFF chunks up to ``data``; None hands the file to PyAV (RF64, other codecs)."""
        riff = self._read_exact(12)
        if riff[:4] != b"RIFF":
            self._file.seek(-len(riff), io.SEEK_CUR)
            return None  # RF64/BW64 (files over 4 GiB): FFmpeg's reader handles their ds64 chunk
        offset = 12
        fmt: bytes | None = None
        while True:
            header = self._read_exact(8)
            if len(header) < 8:
                if fmt is None:
                    raise BadWavHeader("WAV file without a 'fmt ' chunk")
                raise BadWavHeader("WAV file without a 'data' chunk")
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            offset += 8
            if chunk_id == b"data":
                break
            if chunk_id == b"fmt ":
                if not 16 <= chunk_size <= 4096:
                    raise BadWavHeader(f"WAV 'fmt ' chunk of {chunk_size} bytes (expected 16 to 40)")
                fmt = self._read_exact(chunk_size)
                if len(fmt) < chunk_size:
                    raise TruncatedAudio("WAV file ends inside its 'fmt ' chunk")
                if chunk_size % 2:
                    self._read_exact(1)
            else:
                skip = chunk_size + (chunk_size % 2)
                if self._size is not None and offset + skip > self._size:
                    raise TruncatedAudio(
                        f"WAV chunk {chunk_id!r} declares {chunk_size} bytes but the file ends first"
                    )
                self._file.seek(skip, io.SEEK_CUR)
            offset += chunk_size + (chunk_size % 2)
        if fmt is None:
            raise BadWavHeader("WAV 'data' chunk before its 'fmt ' chunk")
        tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == 0xFFFE and len(fmt) >= 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID's first two bytes
            tag = struct.unpack("<H", fmt[24:26])[0]
        if tag not in (1, 3):
            self._file.seek(0)  # mu-law, A-law, ADPCM, MP3-in-WAV, ...: FFmpeg's codecs
            return None
        if not 1 <= channels <= 64:
            raise BadWavHeader(f"WAV header declares {channels} channels")
        if not 1000 <= rate <= 768_000:
            raise BadWavHeader(f"WAV header declares a sample rate of {rate} Hz")
        if block_align == 0 or block_align % channels:
            raise BadWavHeader(f"WAV block size {block_align} does not fit {channels} channels")
        container_bytes = block_align // channels
        valid = {1: (1, 2, 3, 4), 3: (4, 8)}[tag]
        if container_bytes not in valid or not 0 < bits <= container_bytes * 8:
            kind = "integer" if tag == 1 else "float"
            raise BadWavHeader(
                f"unsupported WAV sample layout: {bits}-bit {kind} samples in {container_bytes}-byte slots"
            )
        declared = struct.unpack("<I", header[4:])[0]
        data_bytes: int | None = declared
        if self._size is not None:
            available = self._size - offset
            if declared > available:
                if declared not in _STREAMING_SIZES:
                    raise TruncatedAudio(
                        f"the WAV header declares {declared} bytes of audio "
                        f"({declared / (rate * block_align):.2f} s) but the file holds {max(available, 0)} "
                        f"({max(available, 0) / (rate * block_align):.2f} s): it is truncated or its "
                        "header is wrong"
                    )
                data_bytes = None  # written by a streaming encoder: read to the end
            whole = available if data_bytes is None else data_bytes
            seconds = whole / (rate * block_align)
            if seconds > self._limits.max_seconds:
                raise AudioTooLong(_too_long(seconds, self._limits))
        elif declared in _STREAMING_SIZES:
            data_bytes = None
        return _WavFormat(tag, channels, rate, bits, block_align, container_bytes, data_bytes)

    def _iter_wav(self, wav: _WavFormat) -> Iterator[bytes]:
        frame_bytes = max(1, round(wav.rate * self._chunk_seconds)) * wav.block_align
        remaining = wav.data_bytes
        resampler = None if wav.rate == TARGET_RATE else _resampler()
        passthrough = wav.rate == TARGET_RATE and wav.channels == 1 and wav.format_tag == 1
        passthrough = passthrough and wav.container_bytes == 2
        carry = b""
        while True:
            want = frame_bytes if remaining is None else min(frame_bytes, remaining)
            block = self._read_exact(want - len(carry)) if want > len(carry) else b""
            if remaining is not None:
                remaining -= len(block)
            data = carry + block
            usable = len(data) - len(data) % wav.block_align
            data, carry = data[:usable], data[usable:]
            if data:
                if passthrough:
                    yield data
                else:
                    mono = _wav_to_mono(data, wav)
                    if resampler is None:
                        yield _float_to_s16(mono)
                    else:
                        yield from _resample(resampler, mono, wav.rate)
            if not block or remaining == 0:
                break
        if remaining:
            # Only reachable for a source of unknown size: the file ended before the header said.
            raise TruncatedAudio(
                f"the WAV header declares {wav.data_bytes} bytes of audio but the file ends "
                f"{remaining} bytes early: it is truncated or its header is wrong"
            )
        if resampler is not None:
            yield from _flush(resampler)

    # -- PyAV ----------------------------------------------------------------------------------

    def _open_pyav(self, kind: str) -> AudioInfo:
        import av

        try:
            self._container = av.open(self._file, mode="r", format=_PYAV_DEMUXER[kind])
        except av.error.FFmpegError as e:
            raise UndecodableAudio(f"cannot read this {kind.upper()} file: {_ffmpeg_message(e)}") from e
        streams = self._container.streams.audio
        if not streams:
            raise NotAudio(f"this {kind.upper()} file holds no audio stream")
        stream = streams[0]
        ctx = stream.codec_context
        return AudioInfo(
            container=kind,
            codec=ctx.codec.canonical_name,
            sample_rate=int(ctx.sample_rate or 0),
            channels=int(ctx.channels or 0),
        )

    def _iter_pyav(self) -> Iterator[bytes]:
        import av

        container = self._container
        stream = container.streams.audio[0]
        resampler = _resampler()
        packets = errors = 0
        first_error: str | None = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:  # a corrupt packet: skip it, judge at the end
                    errors += 1
                    first_error = first_error or _ffmpeg_message(e)
                    continue
                for frame in frames:
                    frame.pts = None
                    try:
                        out = resampler.resample(frame)
                    except ValueError:  # the stream changed rate or layout mid-way (joined MP3s, HE-AAC)
                        yield from _take(resampler.resample(None))
                        resampler = _resampler()
                        out = resampler.resample(frame)
                    yield from _take(out)
        except av.error.FFmpegError as e:
            if self.samples == 0:
                raise UndecodableAudio(f"cannot decode this {self.info.container.upper()} file: {e}") from e
            raise UndecodableAudio(
                f"the {self.info.container.upper()} file is damaged after "
                f"{self.samples / TARGET_RATE:.1f} s: {_ffmpeg_message(e)}"
            ) from e
        if errors and (self.samples == 0 or errors * 2 > packets):
            raise UndecodableAudio(
                f"{errors} of {packets} {self.info.codec} packets could not be decoded: {first_error}"
            )
        yield from _take(resampler.resample(None))

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        try:
            chunks = self._iter_wav(self._wav) if self._wav is not None else self._iter_pyav()
            pending = b""
            for chunk in chunks:
                # Re-chunk to whole seconds so callers see a steady size (and the level windows align).
                pending += chunk
                step = max(2, round(BYTES_PER_SECOND * self._chunk_seconds) // 2 * 2)
                while len(pending) >= step:
                    yield self._account(pending[:step])
                    pending = pending[step:]
            if pending:
                yield self._account(pending)
            self._finish()
        finally:
            self.close()

    def _account(self, chunk: bytes) -> bytes:
        self.samples += len(chunk) // TARGET_WIDTH
        seconds = self.samples / TARGET_RATE
        if seconds > self._limits.max_seconds:
            raise AudioTooLong(_too_long(seconds, self._limits, at_least=True))
        levels = window_rms(chunk)
        if levels.size:
            self._peak_rms = max(self._peak_rms, float(levels.max()))
        return chunk

    def _finish(self) -> None:
        seconds = self.samples / TARGET_RATE
        if self.samples == 0:
            raise EmptyAudio("the file holds no audio samples")
        if seconds < self._limits.min_seconds:
            raise EmptyAudio(
                f"only {seconds:.3f} s of audio (at least {self._limits.min_seconds:g} s needed)"
            )
        threshold = self._limits.silence_dbfs
        if threshold is not None and self.peak_dbfs < threshold:
            raise SilentAudio(
                f"the recording is silent: its loudest moment is {self.peak_dbfs:.1f} dBFS "
                f"(the threshold is {threshold:g} dBFS)"
            )

    @property
    def peak_dbfs(self) -> float:
        return to_dbfs(self._peak_rms)

    @property
    def duration(self) -> float:
        """Seconds decoded so far (all of it, once iteration has finished)."""
        return self.samples / TARGET_RATE

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._owned:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Window(io.RawIOBase):
    """A view of a caller's seekable file that starts at its current position (which PyAV sees as 0)."""

    def __init__(self, f: IO[bytes], start: int) -> None:
        super().__init__()
        self._f = f
        self._start = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            return self._f.seek(self._start + offset) - self._start
        return self._f.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._f.tell() - self._start


def _too_large(size: int, limits: AudioLimits) -> str:
    return f"the upload is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB"


def _too_long(seconds: float, limits: AudioLimits, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"the recording lasts {more}{seconds:.0f} s; the limit is {limits.max_seconds:.0f} s"


def _ffmpeg_message(e: Exception) -> str:
    return str(getattr(e, "strerror", None) or e)


def _wav_codec_name(wav: _WavFormat) -> str:
    if wav.format_tag == 3:
        return f"pcm_f{wav.container_bytes * 8}le"
    if wav.container_bytes == 1:
        return "pcm_u8"
    return f"pcm_s{wav.container_bytes * 8}le"


def _wav_to_mono(data: bytes, wav: _WavFormat) -> npt.NDArray[np.float32]:
    """Interleaved WAV samples as float32 mono in [-1, 1] (channels averaged)."""
    width = wav.container_bytes
    samples: npt.NDArray[Any]
    if wav.format_tag == 3:
        samples = np.frombuffer(data, dtype="<f4" if width == 4 else "<f8")
    elif width == 1:
        samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    else:
        samples = np.frombuffer(data, dtype="<i4").astype(np.float64) / float(1 << 31)
    frames = samples.reshape(-1, wav.channels)
    mono = frames[:, 0] if wav.channels == 1 else frames.mean(axis=1)
    return np.nan_to_num(mono.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)


def _float_to_s16(mono: npt.NDArray[np.float32]) -> bytes:
    out: bytes = np.clip(np.rint(mono * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return out


def _resampler() -> av.audio.resampler.AudioResampler:
    import av

    return av.AudioResampler(format="s16", layout="mono", rate=TARGET_RATE)


def _resample(
    resampler: av.audio.resampler.AudioResampler, mono: npt.NDArray[np.float32], rate: int
) -> Iterator[bytes]:
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    yield from _take(resampler.resample(frame))


def _flush(resampler: av.audio.resampler.AudioResampler) -> Iterator[bytes]:
    yield from _take(resampler.resample(None))


def _take(frames: list[Any]) -> Iterator[bytes]:
    for frame in frames:
        # s16 mono is packed: one plane, exactly samples * 2 bytes of it are audio.
        yield bytes(frame.planes[0])[: frame.samples * TARGET_WIDTH]


# ---------------------------------------------------------------------------------------------
# Raw PCM of any format (WebSocket streams)


class PcmConverter:
    """Raw interleaved PCM of any rate, width (1-4 bytes) and channel count to 16 kHz mono s16le.

    Keeps an incomplete sample frame for the next call (across :meth:`flush` too), and the
    resampler's state across calls.
    """

    def __init__(self, rate: int = TARGET_RATE, width: int = 2, channels: int = 1) -> None:
        if not 1000 <= rate <= 768_000:
            raise ValueError(f"unsupported sample rate {rate}")
        if width not in (1, 2, 3, 4):
            raise ValueError(f"unsupported sample width {width}")
        if not 1 <= channels <= 64:
            raise ValueError(f"unsupported channel count {channels}")
        self.rate, self.width, self.channels = rate, width, channels
        self._frame = width * channels
        self._carry = b""
        self._passthrough = rate == TARGET_RATE and width == 2 and channels == 1
        self._resampler: av.audio.resampler.AudioResampler | None = None

    def convert(self, data: bytes) -> bytes:
        data = self._carry + data
        whole = len(data) // self._frame * self._frame
        data, self._carry = data[:whole], data[whole:]
        if not data:
            return b""
        if self._passthrough:
            return data
        mono = self._to_mono(data)
        if self.rate == TARGET_RATE:
            return _float_to_s16(mono)
        return self._resample(mono)

    def flush(self) -> bytes:
        """What the resampler still holds (call at the end of the stream, or of a conversation).

        The converter goes on afterwards with a fresh resampler (a flushed one takes no more
        audio), and with the incomplete sample frame it holds: the bytes that follow complete it.
        """
        resampler, self._resampler = self._resampler, None
        if resampler is None:
            return b""
        return b"".join(_flush(resampler))

    def _to_mono(self, data: bytes) -> npt.NDArray[np.float32]:
        samples: npt.NDArray[np.float32]
        if self.width == 1:
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 2:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.width == 3:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
            samples = ints.astype(np.float32) / float(1 << 23)
        else:
            samples = (np.frombuffer(data, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(
                np.float32
            )
        frames = samples.reshape(-1, self.channels)
        mono = frames[:, 0] if self.channels == 1 else frames.mean(axis=1)
        return np.ascontiguousarray(mono, dtype=np.float32)

    def _resample(self, mono: npt.NDArray[np.float32]) -> bytes:
        if self._resampler is None:
            self._resampler = _resampler()
        return b"".join(_resample(self._resampler, mono, self.rate))


# ---------------------------------------------------------------------------------------------
# Raw Opus packets (Omi)


class OpusPacketDecoder:
    """Decode a stream of raw Opus packets, one at a time, to 16 kHz mono s16le.

    Omi devices send one Opus packet per WebSocket frame (16 kHz, mono, 20 ms) with no container.
    libopus decodes at 48 kHz; the result is resampled to 16 kHz and downmixed. The decoder keeps
    state between packets (as Opus requires), so use one per stream. Not thread-safe.
    """

    def __init__(self) -> None:
        import av

        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = 48_000
        self._codec.layout = "mono"
        self._resampler = _resampler()
        self.packets = 0

    def decode(self, packet: bytes) -> bytes:
        """The PCM of one packet (may be empty at first: the resampler holds back a few samples)."""
        import av

        if not packet:
            return b""  # an empty packet would put FFmpeg's decoder into its draining state
        try:
            frames = self._codec.decode(av.Packet(bytes(packet)))
        except av.error.FFmpegError as e:
            raise UndecodableAudio(
                f"Opus packet {self.packets} cannot be decoded: {_ffmpeg_message(e)}"
            ) from e
        self.packets += 1
        out: list[bytes] = []
        for frame in frames:
            frame.pts = None
            out.extend(_take(self._resampler.resample(frame)))
        return b"".join(out)

    def flush(self) -> bytes:
        """The samples still held by the resampler, at the end of the stream."""
        return b"".join(_flush(self._resampler))
