"""The embedded default's broker (a folder, config/broker.py): a reader that takes messages
while a writer sends them reads every message whole, and a process that routes by an
exchange's table while another creates it never reads the table half-written. kombu's own
filesystem transport let a reader take a message's file before its bytes were written, and
the demo's Celery worker stopped on the empty message."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from django.conf import settings
from kombu import Connection
from kombu.transport.virtual import BrokerState

from config.broker import Transport
from config.celery import app

pytestmark = pytest.mark.smoke

MESSAGES = 3_000


def folder_connection(root: Path, transport: Any) -> Connection:
    queue = root / "queue"
    queue.mkdir(exist_ok=True)
    (root / "processed").mkdir(exist_ok=True)
    return Connection(
        "filesystem://",
        transport=transport,
        transport_options={
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(root / "processed"),
            "control_folder": str(root / "control"),
            "store_processed": False,
        },
    )


def send_while_taking(root: Path, transport: Any) -> tuple[list[Any], list[BaseException]]:
    """One thread sends MESSAGES messages while another takes them as they come."""
    received: list[Any] = []
    errors: list[BaseException] = []
    sent_all = threading.Event()
    # Bound before the race: one process's connections share their bindings in memory and
    # route by the table on disk, so a sender that came before the table would send nowhere.
    with folder_connection(root, transport) as conn, conn.SimpleQueue("q"):
        pass

    def send() -> None:
        try:
            with folder_connection(root, transport) as conn, conn.SimpleQueue("q") as queue:
                for n in range(MESSAGES):
                    queue.put({"n": n, "pad": "x" * 512})
        except Exception as exc:
            errors.append(exc)
        finally:
            sent_all.set()

    def take() -> None:
        with folder_connection(root, transport) as conn, conn.SimpleQueue("q") as queue:
            while len(received) + len(errors) < MESSAGES:
                try:
                    message = queue.get(block=False)
                except Empty:
                    if sent_all.is_set() and not any((root / "queue").glob("*.msg")):
                        return
                    continue
                except Exception as exc:  # the empty message's JSONDecodeError
                    errors.append(exc)
                    continue
                received.append(message.payload)
                message.ack()

    threads = [threading.Thread(target=take, daemon=True), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return received, errors


def test_a_reader_racing_the_writer_reads_every_message_whole(tmp_path: Path) -> None:
    received, errors = send_while_taking(tmp_path, Transport)

    assert errors == []
    assert sorted(m["n"] for m in received) == list(range(MESSAGES))
    assert all(m["pad"] == "x" * 512 for m in received)
    assert not list((tmp_path / "queue").iterdir())  # no partial file left behind


def process_view() -> type[Transport]:
    """The transport as a process of its own sees it: bindings of its own in memory."""
    return type("ProcessTransport", (Transport,), {"global_state": BrokerState()})


def test_a_table_being_created_is_never_read_half_written(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    for attempt in range(100):
        root = tmp_path / str(attempt)
        root.mkdir()
        bound = threading.Event()

        def route(root: Path = root, bound: threading.Event = bound) -> None:
            with folder_connection(root, process_view()) as conn:
                while not bound.is_set():
                    try:
                        conn.default_channel.get_table("x")
                    except Exception as exc:  # the empty table's JSONDecodeError
                        errors.append(exc)
                        return

        router = threading.Thread(target=route, daemon=True)
        router.start()
        with folder_connection(root, process_view()) as conn:
            channel = conn.default_channel
            channel.exchange_declare("x", type="direct")
            channel.queue_declare("q")
            channel.queue_bind("q", exchange="x", routing_key="q")
            bound.set()
            assert [binding.queue for binding in channel.get_table("x")] == ["q"]
        router.join(30)

    assert errors == []


def test_the_embedded_default_sends_through_that_transport() -> None:
    assert settings.CELERY_BROKER_URL.startswith("filesystem://")
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
