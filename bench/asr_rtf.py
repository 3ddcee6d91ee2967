"""Real-time factor of the embedded ASR (faster-whisper, Whisper-base int8, 2 CPU threads).

    .venv/bin/python bench/asr_rtf.py                 # a 30 s+ espeak-ng recording, 3 runs
    .venv/bin/python bench/asr_rtf.py --repeat 2 --runs 5

The recording is espeak-ng speech (``-v en-us -s 140 -g 4``, Debian ``espeak-ng``), normalised to
16 kHz mono by ``lifeline.audio`` as an upload would be. The process is pinned to two cores when the
machine has more. Reported: model assembly/verification and load times, the real-time factor
(transcription time / audio duration) of every run, their median, and the word error rate against
the text spoken. The machine's load average is printed too: the bench machine may be shared, and
a busy machine makes the factor worse, never better.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lifeline import audio
from lifeline.providers.asr import EmbeddedWhisper, packaged_whisper_dir, transcript_text

TEXT = (
    "Good morning. I love hiking in the mountains and I enjoy cooking Italian food. "
    "My brother Peter lives in Chicago with his two dogs. "
    "I work at the city hospital as a nurse. "
    "Next summer I am going to visit my parents in Spain. "
    "Remind me to call the dentist by Friday. "
    "I need to buy a birthday present for my mother. "
    "Don't forget to send the insurance papers tomorrow. "
    "The weather was cold and rainy all week, so we stayed inside and played board games."
)


def words(text: str) -> list[str]:
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " "))
    return [w.strip("'") for w in text.split() if w.strip("'")]


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / max(len(ref), 1)


def speech(text: str) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed (Debian package espeak-ng)")
    wav = subprocess.run(
        [espeak, "-v", "en-us", "-s", "140", "-g", "4", "--stdout", text], capture_output=True, check=True
    ).stdout
    return audio.decode(wav).pcm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=1, help="speak the text this many times (1: ~35 s)")
    parser.add_argument("--runs", type=int, default=3, help="timed transcriptions")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for CTranslate2")
    parser.add_argument("--beam", type=int, default=5, help="beam size")
    parser.add_argument("--cache", type=Path, default=None, help="model cache (default: a temp dir)")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > args.threads:
        os.sched_setaffinity(0, set(cpus[: args.threads]))
    text = " ".join([TEXT] * args.repeat)
    pcm = speech(text)
    duration = len(pcm) / audio.BYTES_PER_SECOND

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        started = time.perf_counter()
        packaged_whisper_dir(cache)  # first call joins the parts; both verify the SHA-256
        assemble = time.perf_counter() - started
        started = time.perf_counter()
        packaged_whisper_dir(cache)
        verify = time.perf_counter() - started
        whisper = EmbeddedWhisper(
            cache_dir=cache, cpu_threads=args.threads, beam_size=args.beam, language="en"
        )
        started = time.perf_counter()
        asyncio.run(whisper.load())
        load = time.perf_counter() - started

        times: list[float] = []
        cpu: list[float] = []
        errors: list[float] = []
        for _ in range(args.runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            segments = whisper.transcribe_sync(pcm)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            errors.append(wer(text, transcript_text(segments)))

    rtfs = [t / duration for t in times]
    result = {
        "audio_seconds": round(duration, 2),
        "cpu_threads": args.threads,
        "cores_pinned": len(os.sched_getaffinity(0)),
        "beam_size": args.beam,
        "assemble_seconds": round(assemble, 2),
        "verify_seconds": round(verify, 2),
        "load_seconds": round(load, 2),
        "transcribe_seconds": [round(t, 2) for t in times],
        "rtf": [round(r, 3) for r in rtfs],
        "rtf_median": round(statistics.median(rtfs), 3),
        "cpu_seconds_per_audio_second": [round(c / duration, 3) for c in cpu],
        "wer": [round(e, 3) for e in errors],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    print(
        f"embedded ASR: {duration:.1f} s of speech, {args.threads} threads: "
        f"RTF median {result['rtf_median']} (runs {result['rtf']}), WER {result['wer'][0]:.1%}, "
        f"CPU s per audio s {result['cpu_seconds_per_audio_second']}; "
        f"model load {load:.2f} s, verify {verify:.2f} s; load average {result['load_average']}"
    )


if __name__ == "__main__":
    main()
