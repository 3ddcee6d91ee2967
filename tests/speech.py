"""Real speech for tests: espeak-ng sentences as 16 kHz PCM, the word error rate, and one shared
embedded Whisper model per test session.

espeak-ng (Debian package ``espeak-ng``) writes 22.05 kHz WAV; :mod:`lifeline.audio` normalises it
to 16 kHz mono, the same path an upload takes. A test that needs a missing tool skips locally and
fails when ``CI`` is set, so CI can never pass by skipping.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lifeline import audio
from lifeline.providers.asr import EmbeddedWhisper, packaged_whisper_dir

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODEL_CACHE = ARTIFACTS / "models"

# About 35 seconds at 140 words per minute: statements the extractors should find, and plain text.
PARAGRAPH = (
    "Good morning. I love hiking in the mountains and I enjoy cooking Italian food. "
    "My brother Peter lives in Chicago with his two dogs. "
    "I work at the city hospital as a nurse. "
    "Next summer I am going to visit my parents in Spain. "
    "Remind me to call the dentist by Friday. "
    "I need to buy a birthday present for my mother. "
    "Don't forget to send the insurance papers tomorrow. "
    "The weather was cold and rainy all week, so we stayed inside and played board games."
)
SHORT = "I love hiking in the mountains. Remind me to call the dentist by Friday."


def require(tool: str) -> str:
    """The path of ``tool``; skip the test if it is missing (fail instead when ``CI`` is set)."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (Debian package: {tool})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def espeak_wav(text: str, speed: int = 140) -> bytes:
    """espeak-ng's WAV of ``text`` (US English, ``-g 4`` word gaps), as written to stdout."""
    espeak = require("espeak-ng")
    done = subprocess.run(
        [espeak, "-v", "en-us", "-s", str(speed), "-g", "4", "--stdout", text],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return done.stdout


def espeak_pcm(text: str, speed: int = 140) -> bytes:
    """``text`` spoken by espeak-ng as 16 kHz mono s16le PCM."""
    return audio.decode(espeak_wav(text, speed)).pcm


def _words(text: str) -> list[str]:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, case and
    punctuation ignored (Levenshtein distance over words)."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / len(ref)


@functools.cache
def whisper_model_dir() -> Path:
    """The packaged Whisper-base, assembled and verified once (kept under tests/artifacts)."""
    return packaged_whisper_dir(MODEL_CACHE)


@functools.cache
def shared_whisper() -> EmbeddedWhisper:
    """One embedded transcriber for the whole session (the model loads on its first use)."""
    whisper_model_dir()
    return EmbeddedWhisper(cache_dir=MODEL_CACHE, language="en")
