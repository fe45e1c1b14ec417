"""Command line: ``sidecar serve --config FILE``, ``sidecar check FILE``, ``sidecar demo``,
``sidecar probe URL``, ``sidecar fingerprint`` and ``sidecar token AGENT_ID``.

Exit status: 0 on success, 2 when the config has errors (every one is printed,
each with its file:line) or on bad usage; ``probe`` exits 1 when a step failed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from collections.abc import Sequence

from . import __version__, probe
from .auth import valid_agent_id
from .config import AuthPolicy, Config, read_config
from .extensions import ALLOW_ENV, allowed_by_env, pure_python_parts, refusal
from .fingerprint import describe, secret_bytes, whitespace_note, without_line_end
from .logs import event
from .startup import config_to_serve, report
from .tokens import MINT_ALGORITHM, mint, parse_ttl, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar", description="WebSocket-aware reverse proxy for edge agents.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default="routes.yaml", help="routes file (default: routes.yaml)")
    serve.add_argument(
        "--allow-pure-python",
        action="store_true",
        help=f"start even if aiohttp runs without its C extensions (also {ALLOW_ENV}=1)",
    )
    check = commands.add_parser("check", help="validate a routes file without serving")
    check.add_argument("file", help="routes file to validate")
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
    token = commands.add_parser(
        "token",
        help="print a signed token (JWT) for one agent, from an auth policy's jwt.secrets",
        description="Prints an HS256 token whose agent claim is AGENT_ID, signed with the policy's first "
        "jwt.secrets key (the secrets come from the environment, as for serve). Give each edge device "
        "its own; see docs/jwt.md.",
    )
    token.add_argument("agent_id", metavar="AGENT_ID", help="the agent the token is for")
    token.add_argument("--config", default="routes.yaml", help="routes file (default: routes.yaml)")
    token.add_argument("--auth", metavar="NAME", help="the auth policy (default: the only one with jwt)")
    token.add_argument("--ttl", default="24h", help="how long it is valid: 90s, 30m, 24h, 30d (default: 24h)")
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args.agent_id, args.config, args.auth, args.ttl)
    if args.command == "probe":
        return probe.run(args)
    if args.command == "fingerprint":
        return _fingerprint(args.env)
    if args.command == "check":
        return _check(args.file)
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
    for name, policy in sorted(config.auth.items()):
        for line in summary(policy.jwt) if policy.jwt else ():
            print(f"  auth {name}: jwt: {line}")
    for path in (config.live_path, config.ready_path):
        covering = [r for r in config.routes if r.prefix is not None and path.startswith(r.prefix)]
        longest = max(covering, key=lambda r: len(r.prefix or ""), default=None)
        shadows = f" (route '{longest.name}' never sees it)" if longest else ""
        print(f"  {path} is answered by the sidecar itself, before routing{shadows}")
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
    from .server import serve  # imports aiohttp: keep 'check' light

    return asyncio.run(serve(config, lambda: read_config(path, strict=True)))


def _token(agent_id: str, path: str, auth: str | None, ttl_text: str) -> int:
    """``sidecar token``: the token on stdout, what it is on stderr; 2 when it cannot be made."""
    try:
        ttl = parse_ttl(ttl_text)
    except ValueError:
        return _cannot(f"--ttl: expected a duration such as 30m, 24h or 30d, got {ttl_text!r}")
    config, problems = read_config(path, strict=False)
    if config is None:
        report(problems)
        return _cannot(f"{path} has errors (see above)")
    name, why = _jwt_policy(config, auth)
    if why is not None:
        return _cannot(why)
    policy = config.auth[name]
    jwt = policy.jwt
    if jwt is None or not jwt.secrets:
        report([p for p in problems if "not set" in p.message])
        return _cannot(f"auth.{name} has no jwt.secrets set (is its variable set here?): nothing to sign with")
    if MINT_ALGORITHM not in jwt.algorithms:
        return _cannot(f"auth.{name}.jwt.algorithms does not accept {MINT_ALGORITHM}: the token would be refused")
    rule = policy.agent_id
    if rule is not None and not valid_agent_id(agent_id, rule):
        return _cannot(
            f"{agent_id!r} is not a valid agent id for auth.{name}: it must match {rule.pattern.pattern!r} "
            f"(at most {rule.max_length} characters)"
        )
    now = time.time()
    print(mint(jwt, agent_id, ttl=ttl, now=now))
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now + ttl))
    key = describe(jwt.secrets[0])
    print(f"sidecar token: for {agent_id}, valid until {until}, signed with {key}", file=sys.stderr)
    return 0


def _jwt_policy(config: Config, auth: str | None) -> tuple[str, str | None]:
    """The policy ``--auth`` names, else the only one with ``jwt``; or why there is none."""
    with_jwt = sorted(name for name, policy in config.auth.items() if policy.jwt is not None)
    if auth is not None:
        policy: AuthPolicy | None = config.auth.get(auth)
        if policy is None:
            return auth, f"no auth policy named {auth!r} (defined: {', '.join(sorted(config.auth)) or 'none'})"
        return auth, None if policy.jwt is not None else f"auth.{auth} has no jwt section"
    if len(with_jwt) == 1:
        return with_jwt[0], None
    if not with_jwt:
        return "", "no auth policy has a jwt section"
    return "", f"several auth policies have jwt ({', '.join(with_jwt)}): name one with --auth"


def _cannot(why: str) -> int:
    print(f"sidecar token: {why}", file=sys.stderr)
    return 2
