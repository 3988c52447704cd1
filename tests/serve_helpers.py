"""`reslab serve` for the serving tests: in a thread of this process (ThreadServer), or as the
real command in a subprocess on a free loopback port (ServeProcess)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import reslab
from deploy_helpers import digits_checkpoint, digits_pngs
from reslab.serve import listen, make_server


class ThreadServer:
    """uvicorn serving app in a thread of this process, on a free loopback port."""

    def __init__(self, app) -> None:
        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(app, graceful_s=5)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no server"
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ServeProcess:
    """`python -m reslab serve CKPT --port 0 FLAGS` with this checkout's source, one torch
    thread; `url` from its first line, `lines` its other start-up lines."""

    def __init__(self, ckpt: Path, *flags: str) -> None:
        src = str(Path(reslab.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "reslab", "serve", str(ckpt),
                                      "--port", "0", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.first = self.proc.stdout.readline()
        if " at http://127.0.0.1:" not in self.first:
            self.proc.kill()
            raise AssertionError(f"no server: {self.first!r} {self.proc.stderr.read()}")
        self.url = self.first.rsplit(" at ", 1)[1].strip()
        self.lines = [self.proc.stdout.readline().strip() for _ in range(2)]

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def digits_files(root: Path, n: int) -> tuple[Path, list[Path]]:
    """The digits checkpoint (root/model.safetensors) and its first n test images as PNGs."""
    paths, _ = digits_pngs(root, n)
    return digits_checkpoint(root / "model.safetensors"), paths
