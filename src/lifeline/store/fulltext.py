"""A user's search text, turned into words, and those words into an FTS5 query.

Both stores take the query as plain words, never as a query language: a user typing ``"``,
``*``, ``NEAR(``, ``OR`` or ``-x`` must get a search for those words (or nothing), not a syntax
error. Words are runs of letters and digits, as SQLite's unicode61 tokenizer and PostgreSQL's
parser both split them; a query without any word matches nothing.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")


def query_words(query: str) -> list[str]:
    """The words of ``query``, in order (empty when it is only punctuation or blank)."""
    return _WORD.findall(query)


def fts5_match(words: list[str]) -> str:
    """An FTS5 MATCH expression requiring every word: each a quoted string, so that operators
    (``OR``, ``NOT``, ``NEAR``) and special characters are taken as text."""
    if not words:
        raise ValueError("an FTS5 query needs at least one word")
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)
