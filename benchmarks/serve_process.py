"""``qkv serve`` as a user runs it, in a child process: on 127.0.0.1 and a free port (``--port 0``, read back
from the line the server prints), ready once ``/readyz`` answers 200. The load benchmark measures it; the
server tests talk to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


class Server:
    """A running ``qkv serve ARGS``: its base ``url`` (e.g. ``http://127.0.0.1:41234``) and everything it
    wrote on stderr so far. ``threads`` sets its OMP_NUM_THREADS."""

    def __init__(self, args: list[str], *, threads: int = 1, start_timeout_s: float = 120.0) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "qkv", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.start_timeout_s = start_timeout_s
        self._stderr: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode("utf-8", errors="replace")
                self._stderr.append(line)
                match = re.search(r"on (http://[^/\s]+)/", line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(start_timeout_s) or not self.url:
            self.stop()
            raise RuntimeError(f"qkv serve did not start: {self.stderr}")
        self.wait_ready()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"qkv serve exited with {self.process.returncode}: {self.stderr}")
            time.sleep(0.05)
        raise RuntimeError(f"qkv serve was not ready after {self.start_timeout_s} s: {self.stderr}")

    def rss_mb(self) -> float:
        """The server's resident memory (Linux /proc; 0 elsewhere)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0.0
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) / 1024 if match else 0.0

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit code (killed after ``timeout_s``: a server that does not stop is a failure
        the caller sees in the code, -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
