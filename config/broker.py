"""The embedded default's broker: kombu's filesystem transport, with files that a reader
never sees half-written.

kombu's filesystem channel creates a message's file under its final name and then writes
it, while a reader moves any file with that name out of the queue folder and reads it at
once, without the writer's lock. A reader that comes between the two reads an empty
message, and the Celery worker stops on the `JSONDecodeError` ("Unrecoverable error"): the
demo's worker did, within seconds, with the generator posting every second. Here a message
is written under a name the readers skip and renamed into place once complete; a rename
within one folder is atomic, so a reader sees the whole message or none of it.

An exchange's table of bound queues had the same gap when its file was first created
(created empty, then locked and written, while readers lock only what they open): here it
is created with an empty table, whole, before kombu adds the binding under its lock.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps

# Readers take `<stamp>_<uuid>.<queue>.msg` only: a name ending otherwise is not theirs yet.
PARTIAL_SUFFIX = ".part"


class Channel(filesystem.Channel):
    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(parents=True, exist_ok=True)
            partial = table.with_name(f"{table.name}.{uuid.uuid4()}{PARTIAL_SUFFIX}")
            partial.write_bytes(dumps([]).encode())
            try:
                os.link(partial, table)  # creates the table only if no other process has
            except OSError:
                # Another process created it first, or the file system has no hard links
                # (then kombu's own creation below, as before).
                pass
            finally:
                partial.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)

    # kombu's own two bases name the message `message` and `payload`: no name fits both.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name kombu gives a message: readers take messages in the order of their names.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        partial = path + PARTIAL_SUFFIX
        try:
            with open(partial, "wb") as file:
                file.write(dumps(payload).encode())
            os.replace(partial, path)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {path!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
