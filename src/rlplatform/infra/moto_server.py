"""moto's server with requests serialised.

moto's backends are not thread-safe: its Kinesis shard numbers a record ``max(seq) + 1`` then stores
it, so two concurrent PutRecords calls can get the same sequence number and one record silently
replaces the other (seen here: 44 acknowledged steps missing from the stream). One lock around the
app keeps the server threaded for I/O while each request runs alone, like a real service would
behave from a client's point of view.

Two costs that grow with use are cut without changing any answer: moto finds a shard's newest sequence
number by copying all its keys into a list on every put (quadratic over a stream's life), and werkzeug
formats a log line per request.

One answer is changed to match AWS: a GetRecords call returns at most 10 MiB of data (moto returns up to
``Limit`` records whatever their size, so one call could hand a consumer gigabytes of backlog).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta

from moto.kinesis.models import Record, Shard
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def serialised(app: Callable) -> Callable:
    lock = threading.Lock()

    def handle(environ: dict, start_response: Callable) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    return handle


def _newest_sequence_number(shard: Shard) -> int:
    """Same answer as moto's ``list(shard.records.keys())[-1]`` (insertion order), in O(1)."""
    return next(reversed(shard.records), 0)


# AWS: "GetRecords can retrieve up to 10 MiB of data per call from a single shard".
GET_RECORDS_MAX_BYTES = 10 * 1024 * 1024


def _get_records_capped(shard: Shard, last_sequence_id: str, limit: int | None) -> tuple[list[Record], int, int]:
    """moto's ``Shard.get_records`` (records after ``last_sequence_id``, up to ``limit``) that also stops
    before 10 MiB of data, as AWS does; at least one record is returned when there is one."""
    last = int(last_sequence_id)
    results: list[Record] = []
    size = 0
    for sequence_number, record in shard.records.items():
        if sequence_number <= last:
            continue
        record_bytes = len(record.data) * 3 // 4  # moto keeps the data base64-encoded
        if results and size + record_bytes > GET_RECORDS_MAX_BYTES:
            break
        results.append(record)
        size += record_bytes
        last = sequence_number
        if len(results) == limit:
            break
    if not results:
        return results, last, 0
    newest = shard.records[next(reversed(shard.records))]
    behind = newest.created_at - results[-1].created_at
    # moto < 5.2.6 stamps a record with Unix seconds, later ones with a datetime.
    seconds = behind.total_seconds() if isinstance(behind, timedelta) else behind
    return results, last, int(seconds * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server does: moto builds URLs from it
    Shard.get_max_sequence_number = _newest_sequence_number
    Shard.get_records = _get_records_capped
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access log
    app = serialised(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
