"""What both stores' recording SQL shares: the column list, the row to :class:`RecordingRow`
conversion and the page bounds (the SQL itself differs by dialect and stays in each mixin)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from lifeline.store.base import RecordingRow

RECORDING_COLUMNS: Final = (
    "audio_uuid, user_id, client_id, created_at, source, device_name, filename,"
    " audio_bytes, audio_chunks, last_audio_at, closed_at"
)
MAX_PAGE: Final = 1000  # rows (or audio chunks) one read returns at most


def recording_from_row(row: Sequence[Any]) -> RecordingRow:
    """A row selected with :data:`RECORDING_COLUMNS`, in that order."""
    return RecordingRow(
        audio_uuid=row[0],
        user_id=row[1],
        client_id=row[2],
        created_at=float(row[3]),
        source=row[4],
        device_name=row[5],
        filename=row[6],
        audio_bytes=int(row[7]),
        audio_chunks=int(row[8]),
        last_audio_at=None if row[9] is None else float(row[9]),
        closed_at=None if row[10] is None else float(row[10]),
    )


def bounded(limit: int) -> int:
    """``limit`` clamped to ``0..MAX_PAGE``."""
    return max(0, min(limit, MAX_PAGE))


def page(limit: int, offset: int) -> tuple[int, int]:
    """LIMIT and OFFSET values: the limit clamped, a negative offset read as 0."""
    return bounded(limit), max(0, offset)
