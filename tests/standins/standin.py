#!/usr/bin/env python3
"""Recording stand-in for CLIs that cannot run on the test machine: docker (no engine),
systemctl (systemd is not PID 1 on the test host), mongodump/mongorestore (MongoDB tools
are not in Debian 12), influx (InfluxDB 2 is not in Debian 12).

Every call is appended as one JSON line to $STANDIN_LOG; answers come from $STANDIN_STATE.
"""

import json
import os
import sys
from pathlib import Path

program = Path(sys.argv[0]).name
args = sys.argv[1:]
state_path = Path(os.environ["STANDIN_STATE"])
state = json.loads(state_path.read_text()) if state_path.exists() else {}
record = {"program": program, "args": args}


def option(name):
    for arg in args:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


if program == "mongodump" or program == "mongorestore":
    config = option("--config")
    record["config"] = Path(config).read_text() if config else None
if program == "influx":
    record["token_in_env"] = os.environ.get("INFLUX_TOKEN")
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")


def fail(message, code=1):
    print(message, file=sys.stderr)
    sys.exit(code)


if program == "docker":
    if args[:1] == ["compose"]:
        verb = next(a for a in args[1:] if a in ("ps", "stop", "start", "config"))
        if verb == "ps":
            print("\n".join(state.get("running", [])))
        elif verb == "config" and "--services" in args:  # the compose file's, as compose
            compose = Path(args[args.index("-f") + 1])
            if not compose.is_file():
                fail(f"open {compose}: no such file or directory", 14)
            import yaml

            every = "--profile" in args and args[args.index("--profile") + 1] == "*"
            services = (yaml.safe_load(compose.read_text()) or {}).get("services") or {}
            # (as Compose v2: a service with profiles: only once one of them is enabled)
            print("\n".join(n for n, s in services.items() if every or "profiles" not in (s or {})))
        elif verb == "config":
            print(
                json.dumps(
                    {"services": {n: {"image": i} for n, i in state.get("images", {}).items()}}
                )
            )
        elif verb == "stop" and state.get("fail_stop"):
            fail("Error response from daemon: cannot stop")
    elif args[:2] == ["image", "inspect"]:
        image = args[-1]
        print(json.dumps([f"{image.split(':')[0]}@sha256:{'ab' * 32}"]))
elif program == "systemctl":
    if args[:1] == ["is-active"]:
        sys.exit(0 if args[-1] in state.get("active", []) else 3)
elif program == "mongodump":
    Path(option("--archive")).write_bytes(b"fake mongo archive")
    if state.get("mongo_fail"):
        fail("Failed: error connecting to db server: server selection error")
elif program == "mongorestore":
    if "--dryRun" in args and state.get("mongo_fail"):
        fail("Failed: error connecting to db server: server selection error")
elif program == "influx" and args[:1] == ["backup"]:
    target = Path(args[-1])
    target.mkdir(parents=True, exist_ok=True)
    (target / "manifest.json").write_text("{}")
