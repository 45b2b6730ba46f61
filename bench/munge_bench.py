"""Time one MUNGE encode and one decode through libmunge (ctypes) and through the commands.

Wall time per call, in µs, from the caller's side: one round trip on munged's socket for
libmunge, a fork/exec of ``munge`` / ``unmunge`` plus that round trip for the commands.
Without ``--socket`` it starts a private munged (tests/mungeserver.py: own key, own socket)
and stops it afterwards. Prints figures; asserts nothing.

    .venv/bin/python bench/munge_bench.py [--socket PATH] [--iterations 300] [--payload 64]
        [--threads 8]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from jobenergy.core import munge

ROOT = Path(__file__).resolve().parent.parent


def _load_mungeserver() -> ModuleType:
    # By path, as tests/conftest.py does: tests/ is not a package on sys.path.
    name = "jobenergy_mungeserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "mungeserver.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextlib.contextmanager
def _socket(path: str | None) -> Iterator[str]:
    if path is not None:
        yield path
        return
    mungeserver = _load_mungeserver()
    munged = mungeserver.find_munged()
    if munged is None:
        sys.exit(mungeserver.NOT_FOUND_MESSAGE)
    with mungeserver.MungeServer(munged) as server:
        yield server.socket_path


def _figures(samples_s: list[float]) -> str:
    us = sorted(s * 1e6 for s in samples_s)
    p50 = us[len(us) // 2]
    p99 = us[min(len(us) - 1, len(us) * 99 // 100)]
    return f"mean {statistics.fmean(us):9.1f}  p50 {p50:9.1f}  p99 {p99:9.1f}"


def _bench(backend: munge.Backend, socket_path: str, iterations: int, payload: bytes) -> None:
    # Warm up: first calls load the library or page in the programs.
    for _ in range(5):
        munge.decode(munge.encode(payload, socket_path=socket_path, backend=backend),
                     socket_path=socket_path, backend=backend)
    creds: list[str] = []
    enc: list[float] = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        creds.append(munge.encode(payload, socket_path=socket_path, backend=backend))
        enc.append(time.perf_counter() - t0)
    dec: list[float] = []
    for cred in creds:
        t0 = time.perf_counter()
        got = munge.decode(cred, socket_path=socket_path, backend=backend)
        dec.append(time.perf_counter() - t0)
        assert got.payload == payload
    print(f"{backend:9s} encode  {_figures(enc)}")
    print(f"{backend:9s} decode  {_figures(dec)}")


def _bench_threads(socket_path: str, iterations: int, payload: bytes, threads: int) -> None:
    # The server decodes from many request threads: libmunge releases the GIL in the call.
    creds = [munge.encode(payload, socket_path=socket_path) for _ in range(iterations)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for got in pool.map(
            lambda cred: munge.decode(cred, socket_path=socket_path, backend="libmunge"), creds
        ):
            assert got.payload == payload
    elapsed = time.perf_counter() - t0
    print(f"libmunge  decode  {threads} threads: {iterations / elapsed:,.0f} decodes/s")


def main() -> None:
    """Run the benchmark and print the figures (µs per call)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="munged's socket; default: start a private munged")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per credential")
    parser.add_argument("--threads", type=int, default=8, help="threads for the throughput line")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    with _socket(args.socket) as socket_path:
        print(f"munged at {socket_path}; {args.iterations} calls each; {args.payload}-byte "
              "payload; µs per call")
        backends: list[munge.Backend] = ["libmunge", "command"]
        for backend in backends:
            _bench(backend, socket_path, args.iterations, payload)
        _bench_threads(socket_path, args.iterations * 4, payload, args.threads)


if __name__ == "__main__":
    main()
