"""Command line: ``sidecar serve --config FILE``, ``sidecar check FILE``, ``sidecar demo``,
``sidecar probe URL``, ``sidecar fingerprint`` and ``sidecar token AGENT_ID``.

Exit status: 0 on success, 2 when the config has errors (every one is printed,
each with its file:line) or on bad usage; ``probe`` exits 1 when a step failed.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, probe
from .clients import settings
from .config import read_config
from .config.environment import RAILWAY_MARKER, Reference, variables_of
from .config.files import SHIPPED_CONFIG
from .config.reader import Unreadable
from .extensions import ALLOW_ENV, allowed_by_env, pure_python_parts, refusal
from .fingerprint import describe, secret_bytes, whitespace_note, without_line_end
from .logs import event
from .minting import add_token_command, token
from .startup import config_to_serve, report, secret_states
from .tokens import summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar", description="WebSocket-aware reverse proxy for edge agents.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the proxy", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("-h", "--help", action=_HelpWithEnvironment, help="show this help message and exit")
    serve.add_argument("--config", default="routes.yaml", help="routes file (default: routes.yaml)")
    serve.add_argument(
        "--allow-pure-python",
        action="store_true",
        help=f"start even if aiohttp runs without its C extensions (also {ALLOW_ENV}=1)",
    )
    check = commands.add_parser("check", help="validate a routes file without serving")
    check.add_argument("file", nargs="?", help="routes file to validate (default: routes.yaml)")
    check.add_argument("--config", help="the same, as 'serve --config' takes it")
    demo = commands.add_parser("demo", help="run the proxy before a built-in echo backend; print commands to try")
    demo.add_argument("--config", help="routes file (default: ./routes.yaml, else the one installed with sidecar)")
    probe_command = commands.add_parser(
        "probe",
        help="walk a WebSocket connection to URL step by step and say what to fix",
        description=probe.USAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_arguments(probe_command)
    secret = commands.add_parser(
        "fingerprint",
        help="print a secret's fingerprint (from stdin or --env VAR), never the secret",
        description="Prints the fingerprint of a secret read from stdin (without its trailing newline) or "
        "from the environment variable VAR: compare it with the one 'sidecar probe' shows. "
        "The derivation is documented in sidecar/fingerprint.py.",
    )
    secret.add_argument("--env", metavar="VAR", help="read the secret from the environment variable VAR")
    add_token_command(commands)
    args = parser.parse_args(argv)
    if args.command == "token":
        return token(args.agent_id, args.config, args.auth, args.ttl)
    if args.command == "probe":
        return probe.run(args)
    if args.command == "fingerprint":
        return _fingerprint(args.env)
    if args.command == "check":
        if args.file and args.config and args.file != args.config:
            check.error(f"two routes files given ({args.file} and --config {args.config}): give one")
        return _check(args.config or args.file or "routes.yaml")
    if args.command == "demo":
        from .demo import main as demo_main  # imports aiohttp: keep 'check' light

        return demo_main(args.config)
    return _serve(args.config, allow_pure_python=args.allow_pure_python or allowed_by_env(os.environ))


def _fingerprint(env_var: str | None) -> int:
    if env_var is not None:
        value = os.environ.get(env_var)
        if not value:
            print(f"sidecar fingerprint: {env_var} is {'empty' if value == '' else 'not set'}", file=sys.stderr)
            return 2
        secret = secret_bytes(value)
    elif sys.stdin.isatty():
        secret = getpass.getpass("secret (not shown): ").encode("utf-8", "surrogateescape")
    else:
        secret = without_line_end(sys.stdin.buffer.read())
    if not secret:
        print("sidecar fingerprint: no secret on stdin (pipe it in, or use --env VAR)", file=sys.stderr)
        return 2
    note = whitespace_note(secret)
    if note:
        print(note, file=sys.stderr)
    print(describe(secret))
    return 0


def _check(path: str) -> int:
    config, problems = read_config(path, strict=False)
    report(problems)
    if config is None:
        errors = sum(p.severity == "error" for p in problems)
        print(f"{path}: {errors} error(s); not valid", file=sys.stderr)
        return 2
    print(f"{path}: valid, {len(config.routes)} route(s)")
    for route in config.routes:
        kind = "websocket" if route.websocket else "http"
        target = route.upstream.name + " " + (route.upstream_path or "(same path)")
        auth = route.auth.name if route.auth else "none"
        print(f"  {route.name:<14} {kind:<9} {route.describe_paths():<24} -> {target:<24} auth={auth}")
    for policy, states in secret_states(config, os.environ).items():
        for name, state in states.items():
            print(f"  auth {policy:<9} {name:<24} {state}")
        if not states:
            print(f"  auth {policy:<9} (no variables: its secrets are written in the file)")
    for name, auth_policy in sorted(config.auth.items()):
        for line in summary(auth_policy.jwt) if auth_policy.jwt else ():
            print(f"  auth {name:<9} jwt: {line}")
    for key, (value, why) in settings(config).items():
        print(f"  listen.{key}: {value} ({why})")
    for path in (config.live_path, config.ready_path):
        covering = [r for r in config.routes if r.prefix is not None and path.startswith(r.prefix)]
        longest = max(covering, key=lambda r: len(r.prefix or ""), default=None)
        shadows = f" (route '{longest.name}' never sees it)" if longest else ""
        print(f"  {path} is answered by the sidecar itself, before routing{shadows}")
    if config.state.redis:  # the password never: display() replaces it
        shared = config.state
        print(
            f"  state shared by the fleet in {shared.display} (keys {shared.key_prefix}*, leases {shared.lease_ttl:g}s)"
        )
    return 0


def _serve(path: str, *, allow_pure_python: bool) -> int:
    pure = pure_python_parts()
    if pure and not allow_pure_python:
        print(refusal(pure), file=sys.stderr)
        return 2
    config = config_to_serve(path, lambda: read_config(path, strict=True))
    if config is None:
        return 2
    if pure:
        event(logging.WARNING, "sidecar.pure_python", parts=pure, allowed_by="--allow-pure-python or " + ALLOW_ENV)
    from .server import run, serve  # imports aiohttp: keep 'check' light

    secrets = secret_states(config, os.environ)  # before the loop runs: scrypt is slow on purpose
    return run(serve(config, lambda: read_config(path, strict=True), secrets=secrets))


class _HelpWithEnvironment(argparse.Action):
    """``serve --help``: the help, then the environment it reads (the shipped file is read
    only when help is asked for, not at every command)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.epilog = serve_environment()
        parser.print_help()
        parser.exit()


# The process's own variables, beside the routes file's: (name, as shown, what it does).
_PROCESS = (
    (ALLOW_ENV, ALLOW_ENV + "=1", ["start even if aiohttp runs without its C extensions (--allow-pure-python)"]),
    (
        "AIOHTTP_NO_EXTENSIONS",
        "AIOHTTP_NO_EXTENSIONS",
        ["read by aiohttp: if set, it runs without them, and serve refuses to start"],
    ),
    (
        RAILWAY_MARKER,
        RAILWAY_MARKER,
        [
            "set by Railway (so are other RAILWAY_* variables): an upstream url",
            "that falls back to a loopback default written in the file is then an error",
        ],
    ),
)


def _shipped_variables() -> list[Reference] | None:
    try:
        return variables_of(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, Unreadable):
        return None


def serve_environment() -> str:
    """``serve --help``'s list of the environment variables it reads: those the shipped
    routes.yaml names (read from it, so the list cannot drift), then the process's own.
    The one list: the Dockerfile's is checked against it (tests/test_deploy.py)."""
    lines = ["environment (the shipped routes.yaml's variables; a file of your own reads those it names):"]
    found = _shipped_variables()
    if found is None:
        found = []
        lines.append(f"  ({SHIPPED_CONFIG} cannot be read)")
    for name in dict.fromkeys(r.name for r in found):
        refs = [r for r in found if r.name == name]
        where = ", ".join(dict.fromkeys(r.where for r in refs))
        default = refs[0].default
        if refs[0].secret:
            what = "a secret, " + ("required" if default is None else "optional")
        else:
            what = "required" if default is None else f"default {default}" if default else "default: none"
        lines.append(f"  {name:<27} {where} ({what})")
    lines.append("process:")
    for _, shown, says in _PROCESS:
        lines.append(f"  {shown:<27} {says[0]}")
        lines += [f"  {'':<27} {more}" for more in says[1:]]
    return "\n".join(lines)
