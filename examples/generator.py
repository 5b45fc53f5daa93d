"""Post a few random orders to the demo source every second (stdlib only).

python examples/generator.py --api-url http://127.0.0.1:8000 --token-file data/demo-token
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

CUSTOMERS = ["ada", "grace", "linus", "barbara", "ken", "margaret"]


def post(api_url: str, token: str, body: dict) -> int:
    request = urllib.request.Request(  # noqa: S310 (the platform's own URL)
        f"{api_url}/v1/events",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return int(response.status)


def orders(now: dt.datetime) -> list[dict]:
    return [
        {
            "order_id": uuid.uuid4().hex[:12],
            "customer": random.choice(CUSTOMERS),  # noqa: S311 (demo data)
            "amount": round(random.uniform(-5, 120), 2),  # noqa: S311 (some are refunds: dropped)
            "ts": (now - dt.timedelta(milliseconds=random.randint(0, 999))).isoformat(),  # noqa: S311
        }
        for _ in range(random.randint(1, 5))  # noqa: S311
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-url", default="http://127.0.0.1:8000")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--dataset", default="shop.orders")
    args = parser.parse_args()
    token = args.token_file.read_text().strip()
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while running:
        now = dt.datetime.now(dt.UTC)
        body = {
            "dataset": args.dataset,
            "idempotency_key": now.strftime("%Y%m%dT%H%M%S.%f"),
            "range_start": (now - dt.timedelta(seconds=args.interval)).isoformat(),
            "range_end": now.isoformat(),
            "payload": {"orders": orders(now)},
        }
        try:
            post(args.api_url, token, body)
        except (urllib.error.URLError, OSError) as exc:
            print(f"generator: {exc}; retrying", file=sys.stderr)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
