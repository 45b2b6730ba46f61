"""What authentication costs: per batch on the server, per push on the agent.

Server: the whole authentication of one realistic batch (ingest_bench's 23 760-record batch,
gzip'd, as an agent sends it every 10 s with 32 jobs and 8 GPUs) through the real
``Authenticator`` and ``Roles``: SHA-256 of the body, the MUNGE decode round trip to munged,
the node map; then a node token (SQLite lookup) and a Slurm JWT for comparison. Agent: signing
one push with ``MungeAuth`` (SHA-256 + encode round trip), as a share of a core at the
agent's default push interval, and relative to its own measured sampling cost.

Wall time per call (it includes munged's own work, in another process). Prints figures,
asserts nothing.

    .venv/bin/python bench/auth_bench.py [--iterations 300] [--socket PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import jwt
from ingest_bench import make_batch_dict, records_of  # bench/ is sys.path[0] as a script
from munge_bench import _socket
from sqlalchemy.orm import sessionmaker

from jobenergy.api.access import Roles, SlurmRoles
from jobenergy.api.auth import Authenticator
from jobenergy.collector import tokens
from jobenergy.collector.db import make_engine, upgrade
from jobenergy.collector.settings import ServerSettings
from jobenergy.core import munge
from jobenergy.core.request_auth import MungeAuth, munge_payload

#: The agent's default push interval and its measured sampling cost (bench/agent_bench.py,
#: 32 jobs at 1 Hz: 2.42 ms per sample), to put the signing cost in proportion.
PUSH_INTERVAL_S = 10.0
AGENT_SAMPLE_CPU_S = 2.42e-3


def _figures(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"mean {statistics.fmean(ordered) * 1e6:7.1f} µs  p50 "
            f"{ordered[len(ordered) // 2] * 1e6:7.1f} µs  p99 {p99 * 1e6:7.1f} µs")


def _timed(fn, iterations: int) -> list[float]:
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--socket", default=None, help="munged socket (default: a private one)")
    args = parser.parse_args()
    body = gzip.compress(json.dumps(make_batch_dict("n1", 0)).encode())
    records = records_of(make_batch_dict("n1", 0))
    target = "/api/v1/batches"
    with _socket(args.socket) as sock, tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'auth.db'}"
        upgrade(db_url)
        engine = make_engine(db_url)
        key = Path(tmp) / "jwt_hs256.key"
        key.write_bytes(b"k" * 32)
        addr = munge.decode(munge.encode(b"", socket_path=sock), socket_path=sock).addr
        settings = ServerSettings(db_url=db_url, auth=("munge", "jwt", "token"),
                                  munge_socket=sock, jwt_key=key, nodes={addr: ["n1"]},
                                  sacctmgr="")
        authenticator = Authenticator(settings, settings.auth, sessionmaker(engine))
        roles = Roles(settings, SlurmRoles("", 300))
        print(f"batch: {records} records, {len(body) / 1024:.0f} KiB gzip; "
              f"{args.iterations} iterations; wall time per call")

        def munge_batch() -> None:
            credential = munge.encode(munge_payload("POST", target, body), socket_path=sock)
            t0 = time.perf_counter()
            caller = authenticator.authenticate(
                "POST", target, {"authorization": f"MUNGE {credential}"}, body)
            assert roles.access(caller).may_post_batch("c", "n1")
            server_s.append(time.perf_counter() - t0)

        server_s: list[float] = []
        _timed(munge_batch, args.iterations)
        print(f"server, MUNGE batch (sha256 + decode + node map): {_figures(server_s)}")

        with engine.begin() as conn:
            token = tokens.issue(conn, "agent", "c", "n1", "bench")
        token_s = _timed(lambda: roles.access(authenticator.authenticate(
            "POST", target, {"authorization": f"Bearer {token}"}, body)), args.iterations)
        print(f"server, node token (SQLite lookup):               {_figures(token_s)}")

        now = int(time.time())
        jwt_token = jwt.encode({"sun": "root", "iat": now, "exp": now + 3600}, key.read_bytes(),
                               algorithm="HS256")
        jwt_s = _timed(lambda: authenticator.authenticate(
            "GET", "/api/v1/jobs", {"x-slurm-user-name": "root",
                                    "x-slurm-user-token": jwt_token}, b""), args.iterations)
        print(f"server, Slurm JWT:                                {_figures(jwt_s)}")

        signer = MungeAuth(sock)

        def sign() -> None:
            request = httpx.Request("POST", f"http://127.0.0.1:8080{target}", content=body)
            next(signer.auth_flow(request))

        agent_s = _timed(sign, args.iterations)
        mean_s = statistics.fmean(agent_s)
        print(f"agent, signing one push (sha256 + encode):        {_figures(agent_s)}")
        print(f"agent CPU for signing at one push per {PUSH_INTERVAL_S:g} s: "
              f"{mean_s / PUSH_INTERVAL_S * 100:.4f} % of a core; "
              f"{mean_s / (AGENT_SAMPLE_CPU_S * PUSH_INTERVAL_S) * 100:.2f} % of the agent's own "
              f"sampling CPU ({AGENT_SAMPLE_CPU_S * 1e3:.2f} ms/sample at 1 Hz)")
        engine.dispose()


if __name__ == "__main__":
    main()
