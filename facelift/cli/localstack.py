"""``make stack`` / ``make stack-down`` / ``facelift stack``: the thin command line over :mod:`facelift.stack`
(``python -m facelift.cli.localstack up|down|status|env``)."""

from __future__ import annotations

import json
import logging
import sys

from facelift.stack.auth import StackAuthError
from facelift.stack.local import Stack, StackError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    try:
        stack = Stack.from_env()
        if cmd == "up":
            url = stack.up()
            login = (f"\n  UI login: the contents of {stack.secrets.prefect_auth_path}" if stack.auth else
                     "\n  STACK_AUTH=off: the services accept anyone on this machine")
            print(f"facelift stack is up. Prefect UI: {url}{login}\n  source <(.venv/bin/facelift stack env)  "
                  "# to use it from this shell")  # noqa: T201 - script output
        elif cmd == "down":
            stopped = stack.down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))  # noqa: T201
        elif cmd == "env":
            print("\n".join(stack.shell_exports()))  # noqa: T201
        elif cmd == "status":
            print(json.dumps(stack.status(), indent=1))  # noqa: T201
        else:
            print(f"unknown command {cmd!r}; use up | down | status | env", file=sys.stderr)  # noqa: T201
            return 2
    except (StackError, StackAuthError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
