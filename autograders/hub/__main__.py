"""python -m autograders.hub up|down|status: see autograders/hub/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from autograders.hub import DEFAULT_PREFIX, DEFAULT_ROOT, Hub, HubError, read_accounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autograders.hub", description="A JupyterHub for a lab on this machine (root)."
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("HUB_ROOT") or DEFAULT_ROOT))
    parser.add_argument("--learners", type=int, default=30)
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="account names: PREFIXinstructor, PREFIXlearner01.."
    )
    parser.add_argument("--modules", nargs="*", default=None, help="module ids (default: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ssl-key", help="with --ssl-cert: serve HTTPS on every interface")
    parser.add_argument("--ssl-cert")
    parser.add_argument(
        "--remove-accounts",
        action="store_true",
        help="down: also remove the accounts this hub made, never anyone else's, with their homes: the "
        "instructor's course (gradebook, submissions, feedback) goes too, and the exchange",
    )
    args = parser.parse_args(argv)
    hub = Hub(
        args.root,
        learners=args.learners,
        prefix=args.prefix,
        modules=args.modules or (),
        port=args.port,
        ssl_key=args.ssl_key,
        ssl_cert=args.ssl_cert,
    )
    try:
        if args.command == "up":
            hub.up()
            learners = sum(role == "learner" for role, _ in read_accounts(hub.accounts_file).values())
            print(
                f"hub {'restarted' if hub.restarted else 'running'} at {hub.url}  "
                f"(instructor: {hub.instructor}; "
                f"{learners} learners; passwords in {hub.accounts_file}, root only)\n"
                f"next: hand each learner their line of {hub.accounts_file}; log in as {hub.instructor} and "
                f"open formgrader in a tab of its own: {hub.url}user/{hub.instructor}/formgrader "
                "(autograders/INSTRUCTORS.md, Running a lab hub)"
            )
        elif args.command == "down":
            removed = hub.down(remove_accounts=args.remove_accounts)
            if args.remove_accounts and removed:
                print(
                    f"hub stopped; {len(removed)} accounts removed with their homes "
                    f"({', '.join(removed)}; the instructor's course: gradebook, submissions, "
                    f"feedback), the exchange and instructor-repo/; {hub.root}/env, proxy/ and hub/ stay "
                    f"(rm -r {hub.root} to remove them too)"
                )
            elif args.remove_accounts:
                print(f"hub stopped; no account of this hub was left to remove; {hub.root}/env, proxy/ and "
                      f"hub/ stay (rm -r {hub.root} to remove them too)")
            else:
                print(
                    f"hub stopped; accounts, passwords ({hub.accounts_file}) and everyone's work are kept: "
                    "make hub starts it again"
                )
        else:
            found = hub.status()
            if not found["running"] and not (hub.state_dir.is_dir() or hub.accounts_file.exists()):
                found["note"] = f"no hub in {hub.root} (is HUB_ROOT the one make hub was given?)"
            print(json.dumps(found, indent=1))
    except HubError as error:
        print(f"hub {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
