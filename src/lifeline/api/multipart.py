"""A multipart/form-data reader for uploads that never holds a file in memory past 1 MiB.

Starlette's form parser spools parts to the system temp dir (often RAM-backed) and checks sizes
only afterwards; this one counts every part as it arrives, spools file parts into the data dir,
refuses a part past its limit while still reading the others, and refuses bodies cut off before
their closing boundary. It is built on python-multipart's public ``MultipartParser``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Message, Receive

log = logging.getLogger(__name__)

MAX_FILES: Final = 8  # file parts in one request
MAX_FIELDS: Final = 64  # other form fields (unknown ones are ignored)
FIELD_MAX_BYTES: Final = 64 << 10  # one non-file field
PART_HEADERS_MAX: Final = 8 << 10  # one part's header names and values together
SPOOL_MEMORY: Final = 1 << 20
WRITE_BATCH: Final = 64 << 10  # a spool past SPOOL_MEMORY is written on a thread this much at a time


class BodyTooLarge(Exception):
    pass


def limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises once the request body passes ``limit`` bytes (a client may lie
    about, or leave out, its Content-Length)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return limited


class FormError(Exception):
    """A multipart body that cannot be accepted (400)."""


@dataclass(eq=False, slots=True)
class FilePart:
    filename: str | None
    file: IO[bytes] | None  # None once the part passed the per-file limit (its spool is gone)
    size: int = 0  # received
    written: int = 0  # written to ``file``
    pending: bytearray = field(default_factory=bytearray)  # received, not yet written


@dataclass(eq=False, slots=True)
class _Part:
    name: str = ""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    file: FilePart | None = None
    data: bytearray | None = None  # a non-file field's value; None for a file in another field


class UploadForm:
    """A ``multipart/form-data`` body, parsed as it arrives (python-multipart's parser).

    Starlette's own form parsing spools every file part past 1 MB to the system temporary
    directory (often a RAM-backed tmpfs), with no way to say where, and keeps a part however large
    it grows until the whole body is read. Here the parts of the field ``files`` are spooled past
    :data:`SPOOL_MEMORY` into ``spool_dir`` (the data dir's ``uploads-tmp``): written on the event
    loop while the spool is in memory, and past that on a worker thread in batches of at least
    :data:`WRITE_BATCH` (not one thread hop per received chunk, however small the chunks). A part
    that passes ``max_file_bytes`` is dropped at once and only its size is counted on (it is
    refused as too large, its batch mates are not). Files in other fields are counted and their
    bytes dropped; other fields are kept (up to :data:`FIELD_MAX_BYTES` each) as text.

    A body must end with its closing boundary (:meth:`finish`; python-multipart's ``finalize``
    does not check it): a body cut off before it is refused rather than stored short. A part's
    headers may weigh :data:`PART_HEADERS_MAX` bytes in all (the parser bounds each line and
    their count). A file part is one with a ``filename`` or an RFC 5987 ``filename*`` parameter
    (the decoded ``filename*`` is its name, as RFC 6266 prefers it when both are given).
    """

    def __init__(self, boundary: bytes, *, spool_dir: Path, max_file_bytes: int) -> None:
        self.files: list[FilePart] = []
        self.fields: dict[str, str] = {}
        self._spool_dir = spool_dir
        self._max_file_bytes = max_file_bytes
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0  # the current part's headers so far
        self._file_count = 0
        self._field_count = 0
        self._ended = False  # the closing boundary was seen
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    async def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise FormError(f"invalid multipart data: {exc}") from exc
        current = self._part.file
        for part in self.files:  # at most MAX_FILES
            await self._write(part, final=part is not current)

    async def finish(self) -> None:
        """The body has ended: :class:`FormError` unless it ended with its closing boundary."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise FormError(f"invalid multipart data: {exc}") from exc
        if not self._ended:
            raise FormError("the multipart body ends before its closing boundary (was it cut off?)")
        for part in self.files:
            await self._write(part, final=True)

    async def _write(self, part: FilePart, *, final: bool) -> None:
        """Write what ``part`` received: at once while its spool is in memory (no blocking I/O),
        past that on a worker thread once :data:`WRITE_BATCH` bytes are waiting (or ``final``)."""
        if part.file is None or not part.pending:
            return
        size = len(part.pending)
        if part.written + size <= SPOOL_MEMORY:  # stays in the spool's memory buffer
            part.file.write(part.pending)
        elif size >= WRITE_BATCH or final:  # rolls over to, or goes on in, a file on disk
            await asyncio.to_thread(part.file.write, bytes(part.pending))
        else:
            return
        part.written += size
        part.pending.clear()

    def close(self) -> None:
        """Close (and so delete) every spooled file; blocking I/O (use a worker thread)."""
        for part in self.files:
            if part.file is not None:
                part.file.close()
                part.file = None

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._header_bytes = 0

    def _on_end(self) -> None:
        self._ended = True

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > PART_HEADERS_MAX:
            raise FormError(f"a part's headers are longer than {PART_HEADERS_MAX} bytes")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition = self._part.headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise FormError('a part has no Content-Disposition "name"')
        self._part.name = options[b"name"].decode("utf-8", "replace")
        filename = _extended_filename(disposition)
        if filename is None and b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
        if filename is not None:
            self._file_count += 1
            if self._file_count > MAX_FILES:
                raise FormError(f"too many files: at most {MAX_FILES} in one request")
            if self._part.name == "files":
                # closing it deletes it (its name is unlinked at once where the OS allows)
                spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=str(self._spool_dir))  # noqa: SIM115
                self._part.file = FilePart(filename, spool)
                self.files.append(self._part.file)
        else:
            self._field_count += 1
            if self._field_count > MAX_FIELDS:
                raise FormError(f"too many fields: at most {MAX_FIELDS} besides the files")
            self._part.data = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.data is not None:
            if len(part.data) + end - start > FIELD_MAX_BYTES:
                raise FormError(f"the field {part.name!r} is longer than {FIELD_MAX_BYTES} bytes")
            part.data += data[start:end]
        elif part.file is not None:
            upload = part.file
            upload.size += end - start
            if upload.file is None:
                return
            if upload.size > self._max_file_bytes:  # refused whatever follows: free its spool now
                upload.pending = bytearray()
                spool, upload.file = upload.file, None
                spool.close()  # at most SPOOL_MEMORY in memory, or one file to unlink
                return
            upload.pending += data[start:end]

    def _on_part_end(self) -> None:
        if self._part.data is not None:
            self.fields.setdefault(self._part.name, self._part.data.decode("utf-8", "replace"))


_PARAMETER = re.compile(r'(?:[^;"]|"(?:\\.|[^"\\])*")+')  # a header's ;-separated pieces, quotes kept


def _extended_filename(disposition: bytes) -> str | None:
    """The RFC 5987 ``filename*=charset'lang'percent-encoded`` of a Content-Disposition header,
    decoded (``None`` without one). RFC 7578 tells senders not to use it in a form, but some do;
    python-multipart's ``parse_options_header`` drops it. An unknown charset or a malformed value
    falls back to UTF-8 with replacement characters: the name is for people, not a key."""
    for segment in _PARAMETER.findall(disposition.decode("latin-1"))[1:]:
        key, _, value = segment.partition("=")
        if key.strip().lower() == "filename*":
            break
    else:
        return None
    pieces = value.strip().strip('"').split("'", 2)  # charset, language (ignored), value
    charset, value = (pieces[0] or "utf-8", pieces[2]) if len(pieces) == 3 else ("utf-8", pieces[-1])
    try:
        return urllib.parse.unquote(value, encoding=charset, errors="replace")
    except LookupError:  # an unknown charset
        return urllib.parse.unquote(value, encoding="utf-8", errors="replace")
