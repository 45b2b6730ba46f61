"""``jobenergy-agent`` (or ``python -m jobenergy.agent``): run the node agent.

The entry point the agent's systemd unit starts. It parses the options of ``jobenergy agent``
with argparse and imports the agent and nothing of the command-line tools (typer, rich, click,
httpx: ~10 MB on every node for a daemon that never uses them); ``jobenergy agent``
(``cli/main.py``) parses the same options and calls :func:`run`.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import signal
import sys
import threading
from pathlib import Path

PROGRAM = "jobenergy-agent"


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the parser of the agent's options (those of ``jobenergy agent``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the node agent until SIGTERM/SIGINT (then: final sample, flush, "
                    "exit 0).",
    )
    parser.add_argument("-c", "--config", type=Path, help="TOML file with [agent]")
    parser.add_argument("--node", help="Override [agent] node")
    parser.add_argument("--collector-url", help="Override [agent] collector_url")
    parser.add_argument("--log-level",
                        help="debug, info, warning, error or critical (default info)")
    parser.add_argument("--log-format",
                        help="auto (journal when stderr is the journal, else text), text, "
                             "journal or json")
    parser.add_argument("-V", "--version", action="store_true",
                        help="Print the version and exit")
    return parser


def settle_memory() -> None:
    """Once started: give back what the imports and the first setup left behind.

    ``gc.freeze`` moves every object alive now (modules, classes, the settings) out of the
    collector's generations, so a collection no longer walks them each time (CPU per sample)
    and the pages holding them stay untouched; glibc's ``malloc_trim`` returns the heap freed
    since to the kernel (a few MB of the resident size on every node). Elsewhere than glibc:
    only the freeze.
    """
    gc.collect()
    gc.freeze()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def run(
    config: Path | None = None,
    *,
    node: str | None = None,
    collector_url: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    program: str = PROGRAM,
) -> int:
    """Run the agent until SIGTERM or SIGINT; return the exit status.

    Returns:
        0 after a clean shutdown; 2 when the settings or the node are unusable (one line on
        stderr, ``<program>: <reason>``).
    """
    # Imported here: --help and --version need none of it.
    from jobenergy.agent.daemon import Agent
    from jobenergy.agent.settings_child import load_settings
    from jobenergy.core import logs
    from jobenergy.core.errors import JobEnergyError

    try:
        settings = load_settings(config, node=node, collector_url=collector_url,
                                 log_level=log_level, log_format=log_format)
        logs.configure(settings.log_level, settings.log_format)
        daemon = Agent(settings)
        settle_memory()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        daemon.run(stop)
    except JobEnergyError as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the agent (the console script)."""
    args = build_parser().parse_args(argv)
    if args.version:
        from jobenergy.core.version import VERSION

        print(f"jobenergy {VERSION}")
        return
    sys.exit(run(args.config, node=args.node, collector_url=args.collector_url,
                 log_level=args.log_level, log_format=args.log_format))


if __name__ == "__main__":
    main()
