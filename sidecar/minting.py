"""``sidecar token AGENT_ID``: a signed token (HS256) for one agent, from an auth policy's
``jwt.secrets``, for provisioning an edge device (docs/jwt.md).

The token goes to stdout and nothing else does; what it is (the agent, until when, the
signing key's fingerprint) goes to stderr. Exit status 2, with one line saying why, when
no token can be made that the sidecar would accept.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .auth import valid_agent_id
from .config import AuthPolicy, Config, read_config
from .fingerprint import describe
from .startup import report
from .tokens import MINT_ALGORITHM, mint, parse_ttl


def add_token_command(commands: Any) -> None:
    """The ``token`` sub-command on ``commands`` (argparse's sub-parsers)."""
    command: argparse.ArgumentParser = commands.add_parser(
        "token",
        help="print a signed token (JWT) for one agent, from an auth policy's jwt.secrets",
        description="Prints an HS256 token whose agent claim is AGENT_ID, signed with the policy's first "
        "jwt.secrets key (the secrets come from the environment, as for serve). Give each edge device "
        "its own; see docs/jwt.md.",
    )
    command.add_argument("agent_id", metavar="AGENT_ID", help="the agent the token is for")
    command.add_argument("--config", default="routes.yaml", help="routes file (default: routes.yaml)")
    command.add_argument("--auth", metavar="NAME", help="the auth policy (default: the only one with jwt)")
    command.add_argument("--ttl", default="24h", help="how long it is valid: 90s, 30m, 24h, 30d (default: 24h)")


def token(agent_id: str, path: str, auth: str | None, ttl_text: str) -> int:
    """The token on stdout, what it is on stderr; 2 when it cannot be made."""
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
