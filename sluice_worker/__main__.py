"""`python -m sluice_worker`: run worker processes against a Sluice API with a key.

    python -m sluice_worker whoami --api-url URL --key KEY
    python -m sluice_worker run --api-url URL --key KEY --message '{"task_id": …}'
    python -m sluice_worker run … --message -        (read one JSON message per line of stdin)
    python -m sluice_worker sqs --api-url URL --key KEY --queue QUEUE_URL   (an ECS service)

The key and URL may also come from SLUICE_WORKER_KEY and SLUICE_API_URL; handlers are found
in SLUICE_HANDLER_PATH (colon-separated directories, default `examples`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sluice_worker.client import WorkerClient
from sluice_worker.handlers import handler_dirs
from sluice_worker.runner import run_message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sluice_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["whoami", "run", "sqs"])
    parser.add_argument("--api-url", default=os.environ.get("SLUICE_API_URL"))
    parser.add_argument("--key", default=os.environ.get("SLUICE_WORKER_KEY"))
    parser.add_argument("--message", help="a queue message as JSON, or - for stdin lines")
    parser.add_argument("--handler-path", default=os.environ.get("SLUICE_HANDLER_PATH", "examples"))
    parser.add_argument("--root", default=os.getcwd(), help="base of relative handler paths")
    parser.add_argument("--queue", default=os.environ.get("SLUICE_QUEUE_URL"))
    parser.add_argument(
        "--handler",
        default=os.environ.get("SLUICE_HANDLER"),
        help="module:function for nodes whose handler lives in the image",
    )
    parser.add_argument("--wait", type=int, default=20, help="SQS long-poll seconds")
    parser.add_argument("--visibility", type=int, default=60, help="SQS visibility seconds")
    parser.add_argument("--max-messages", type=int, help="exit after this many messages")
    parser.add_argument("--idle-exit", type=float, help="exit after this long without messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.api_url or not args.key:
        parser.error("--api-url and --key (or SLUICE_API_URL and SLUICE_WORKER_KEY) are required")
    client = WorkerClient(args.api_url, args.key)
    if args.command == "whoami":
        print(json.dumps(client.whoami()))
        return 0
    dirs = handler_dirs(args.handler_path, Path(args.root))
    if args.command == "sqs":
        if not args.queue:
            parser.error("sqs needs --queue (or SLUICE_QUEUE_URL)")
        from sluice_worker.aws import poll_sqs

        handled = poll_sqs(
            args.queue,
            client,
            dirs,
            wait_s=args.wait,
            visibility_s=args.visibility,
            max_messages=args.max_messages,
            idle_exit_s=args.idle_exit,
            default_handler=args.handler,
        )
        print(json.dumps({"handled": handled}), flush=True)
        return 0
    if not args.message:
        parser.error("run needs --message")
    lines = sys.stdin if args.message == "-" else [args.message]
    for line in lines:
        if line.strip():
            counts = run_message(json.loads(line), client, dirs, default_handler=args.handler)
            print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
