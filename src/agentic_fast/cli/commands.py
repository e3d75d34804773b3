"""The ``agentic-fast`` command.

Each subcommand is a pair in ``_COMMANDS``: ``add(subparsers)`` declares its arguments and
``run(args, env) -> exit code`` does the work; a new command adds one pair. Commands that
need settings call ``_load_config`` and leave error reporting to ``main``.

Exit codes: 0 success, 2 bad usage or invalid configuration. ``env`` is the environment
mapping (``os.environ`` unless a test passes its own): it chooses the config file
(``AGENTIC_FAST_CONFIG``) and feeds ``${VAR}`` expansion in it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from agentic_fast import __version__
from agentic_fast.core.config import Config, usable_cores
from agentic_fast.core.errors import ConfigError

DEFAULT_CONFIG_PATH = "config.yaml"
CONFIG_ENV_VAR = "AGENTIC_FAST_CONFIG"

Env = Mapping[str, str]


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV_VAR} or ./{DEFAULT_CONFIG_PATH})")


def _config_path(args: argparse.Namespace, env: Env) -> str:
    return args.config or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def _load_config(args: argparse.Namespace, env: Env) -> Config:
    """The validated config named by ``--config`` / ``$AGENTIC_FAST_CONFIG`` / default."""
    return Config.load(_config_path(args, env), env=env)


# -- check-config --------------------------------------------------------------------------------

class _ConfigDumper(yaml.SafeDumper):
    """Writes multi-line strings (instructions) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def _add_check_config(sub: Any) -> None:
    parser = sub.add_parser(
        "check-config", help="validate the config and print it with secrets masked",
        description="Validate the config file and print the effective settings as YAML, "
                    "secrets masked. Exit status 2 on an invalid config.")
    _add_config_option(parser)


def _run_check_config(args: argparse.Namespace, env: Env) -> int:
    path = _config_path(args, env)
    config = Config.load(path, env=env)
    config.server.require_api_token()  # an exposed /calls API without a token: refused
    print(f"# effective config from {path} (secrets masked)")
    print(yaml.dump(config.masked(), Dumper=_ConfigDumper, sort_keys=False,
                    allow_unicode=True, width=100), end="")
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# -- demo ----------------------------------------------------------------------------------------

def _add_demo(sub: Any) -> None:
    sub.add_parser(
        "demo", add_help=False,
        help="one simulated phone call on loopback, no keys needed (demo --help); "
             "demo --audio: the audio path demo",
        description="Runs agentic_fast.demo.run (or agentic_fast.audio.demo with --audio); "
                    "every argument after 'demo' is its own.")


def _run_demo(args: argparse.Namespace, env: Env) -> int:
    argv = list(args.passthrough)
    if "--audio" in argv:  # the audio converter demo
        argv.remove("--audio")
        from agentic_fast.audio.demo import main as audio_demo  # lazy: numpy and the codec

        return int(audio_demo(argv) or 0)
    from agentic_fast.demo.run import main as call_demo  # lazy: the server and the stand-ins

    return int(call_demo(argv) or 0)


# -- serve ---------------------------------------------------------------------------------------

def _add_serve(sub: Any) -> None:
    parser = sub.add_parser(
        "serve", help="run the call server (uvloop; graceful drain on SIGTERM)",
        description="Serve the Twilio webhooks, the media stream WebSocket and the /calls API.")
    _add_config_option(parser)
    parser.add_argument("--host", help="bind address (default: server.host)")
    parser.add_argument("--port", type=int, help="port (default: server.port)")
    parser.add_argument("--workers", type=_worker_count, metavar="N",
                        help="worker processes on the port (default: server.workers; "
                             "0: one per usable core; 1: a single process)")


def _run_serve(args: argparse.Namespace, env: Env) -> int:
    from agentic_fast.server.runner import run  # lazy: pulls in aiohttp, uvloop, the providers

    config = _load_config(args, env)
    workers = None if args.workers is None else (args.workers or usable_cores())
    return run(config, host=args.host, port=args.port, workers=workers)


def _worker_count(value: str) -> int:
    """``--workers``: 0 (one per usable core) to 1024."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be a number, got {value!r}") from None
    if not 0 <= count <= 1024:
        raise argparse.ArgumentTypeError(f"--workers must be 0 to 1024, got {count}")
    return count


# -- call ----------------------------------------------------------------------------------------

def _add_call(sub: Any) -> None:
    parser = sub.add_parser(
        "call", help="place an outbound call through a running server",
        description="POST /calls on a running server (bearer server.api_token).")
    _add_config_option(parser)
    parser.add_argument("--to", required=True, help="E.164 number to call, e.g. +15551230000")
    parser.add_argument("--prompt", help="what the assistant should do on this call")
    parser.add_argument("--server", metavar="URL",
                        help="server base URL (default: http://server.host:server.port)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the call through its statuses; print its transcript "
                             "when it ends (exit 1 unless it completed)")


def _run_call(args: argparse.Namespace, env: Env) -> int:
    import asyncio

    from agentic_fast.cli.api_client import place_call

    config = _load_config(args, env)
    base = args.server or f"http://{config.server.host}:{config.server.port}"
    if args.wait:
        from agentic_fast.cli.calls import run_call_wait

        return run_call_wait(base, config.server.api_token, args.to, args.prompt, args.timeout)
    ok, text = asyncio.run(place_call(base, args.to, args.prompt, config.server.api_token,
                                      timeout_s=args.timeout))
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


# -- calls ---------------------------------------------------------------------------------------

def _add_calls_common(parser: argparse.ArgumentParser) -> None:
    _add_config_option(parser)
    parser.add_argument("--server", metavar="URL",
                        help="server base URL (default: http://server.host:server.port)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def _add_calls(sub: Any) -> None:
    from agentic_fast.cli.calls import add_calls_arguments

    parser = sub.add_parser(
        "calls", help="call history and control on a running server (list, show, tail, hangup)",
        description="Read and control calls through a running server's API "
                    "(bearer server.api_token).")
    add_calls_arguments(parser, _add_calls_common)


def _run_calls(args: argparse.Namespace, env: Env) -> int:
    from agentic_fast.cli.calls import run_calls

    config = _load_config(args, env)
    base = args.server or f"http://{config.server.host}:{config.server.port}"
    return run_calls(args, base, config.server.api_token)


# -- bench ---------------------------------------------------------------------------------------

def _add_bench(sub: Any) -> None:
    sub.add_parser(
        "bench", add_help=False,
        help="load test: simulated Twilio calls against a local server (bench --help)",
        description="Runs bench.loadgen from the source checkout; every argument after "
                    "'bench' is its own.")


def _run_bench(args: argparse.Namespace, env: Env) -> int:
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]  # src/agentic_fast/cli/commands.py -> checkout
    if not (root / "bench" / "loadgen.py").is_file():
        print("error: agentic-fast bench needs the source checkout (bench/loadgen.py)",
              file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.loadgen import main as loadgen_main  # lazy: the bench is not installed

    return int(loadgen_main(args.passthrough) or 0)


# -- registry and entry point --------------------------------------------------------------------

Command = tuple[Callable[[Any], None], Callable[[argparse.Namespace, Env], int]]

_COMMANDS: dict[str, Command] = {
    "check-config": (_add_check_config, _run_check_config),
    "demo": (_add_demo, _run_demo),
    "serve": (_add_serve, _run_serve),
    "call": (_add_call, _run_call),
    "calls": (_add_calls, _run_calls),
    "bench": (_add_bench, _run_bench),
}
_PASSTHROUGH = frozenset({"demo", "bench"})  # commands that take their arguments verbatim


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentic-fast",
        description="Twilio phone calls bridged to realtime voice models and an OpenClaw agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _run in _COMMANDS.values():
        add(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    """Run the command line; returns the exit status (never raises for user errors)."""
    env = os.environ if env is None else env
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_usage(sys.stderr)
            print("agentic-fast: error: a command is required", file=sys.stderr)
            return 2
        if extra and args.command not in _PASSTHROUGH:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.passthrough = extra
        return _COMMANDS[args.command][1](args, env)
    except SystemExit as exc:  # argparse (ours or a command's) on --help and usage errors
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
