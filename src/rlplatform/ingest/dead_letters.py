"""Dead letters in the bucket: ingest writes them (one object per job, micro-batch and shard), ``rlplatform dlq``
reads them back as counts by reason with samples. Neither side needs Spark."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlplatform.infra import aws
from rlplatform_client.contract import REJECT_KINDS
from rlplatform_client.retry import aws_unreachable, retry

DEAD_LETTER_PREFIX = "dead-letters/"
# The reasons ingest itself adds to the contract's (a dead letter's ``kind``).
CONFLICT = "conflicting_resend"
PARSER_ERROR = "parser_error"
# The contract's reason for a step after its episode's end, which ingest also gives a step whose episode's end
# was stored from an earlier record.
STEP_AFTER_END = "step_after_end"
# Every reason a record can be dead-lettered for, with its meaning (the docs' reference page is generated from it).
REASONS: dict[str, str] = {
    **REJECT_KINDS,
    CONFLICT: "a step whose key is stored already with other content; the first content stays (one dead letter "
    "per step, naming the episode and `t`)",
    PARSER_ERROR: "the parser itself failed on the record: a bug in rlplatform, please report it; the record is "
    "dead-lettered instead of failing its batch",
}
# The file in an ingest job's checkpoint that holds its id (see job_id).
JOB_ID_FILE = "dead-letters-job-id"
# A dead letter keeps this much of its record.
DEAD_LETTER_SAMPLE_BYTES = 2048


def dead_letter_key(job_id: str, batch_id: int, shard_id: str, arrived: float) -> str:
    """Where one micro-batch's dead letters of one shard go: under the UTC day its first record arrived in the
    stream, the ingest job's id (one per checkpoint) and the batch. Two jobs never share a name; a batch
    replayed by the same job after a crash has the same records, so the same name (it overwrites itself)."""
    day = time.strftime("%Y/%m/%d", time.gmtime(arrived))
    return f"{DEAD_LETTER_PREFIX}{day}/{job_id}/batch-{batch_id:09d}-{shard_id}.jsonl"


def job_id(checkpoint: Path) -> str:
    """The ingest job's id, made at its first start and kept in its checkpoint: the same job keeps it across
    restarts, another job (another checkpoint) has its own."""
    path = checkpoint / JOB_ID_FILE
    if not path.exists():
        checkpoint.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, path)
    return path.read_text().strip()


def write_dead_letters(bucket: str, key: str, dead: list[dict]) -> None:
    """Write one object of dead letters (see ``dead_letter_key``); an unreachable S3 is waited out, so no dead
    letter is lost."""
    body = "\n".join(json.dumps(d) for d in dead).encode()
    s3 = aws.s3_client()
    retry(
        lambda: s3.put_object(Bucket=bucket, Key=key, Body=body),
        service="S3",
        endpoint=s3.meta.endpoint_url,
        unreachable=aws_unreachable,
    )


@dataclass
class DeadLetterReport:
    counts: Counter = field(default_factory=Counter)  # kind -> records
    samples: dict[str, list[dict]] = field(default_factory=dict)  # kind -> first few dead letters
    objects: int = 0
    keys: set[str] = field(default_factory=set)  # the objects counted


def read_dead_letters(
    bucket: str, samples_per_kind: int = 3, report: DeadLetterReport | None = None
) -> DeadLetterReport:
    """Every dead letter under the prefix, counted by kind, with the first samples of each.

    Given the ``report`` of an earlier read, only the objects written since are read into it (an object never
    changes once written: a replayed batch rewrites its own with the same records), so a reader that refreshes
    pays one LIST per 1,000 objects and a GET per new one."""
    s3 = aws.s3_client()
    report = report or DeadLetterReport()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=DEAD_LETTER_PREFIX):
        for obj in page.get("Contents", []):
            if obj["Key"] in report.keys:
                continue
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
            report.keys.add(obj["Key"])
            report.objects += 1
            for line in filter(None, body.splitlines()):
                letter = json.loads(line)
                kind = letter.get("kind", "invalid")
                report.counts[kind] += 1
                kept = report.samples.setdefault(kind, [])
                if len(kept) < samples_per_kind:
                    kept.append({**letter, "object": obj["Key"]})
    return report
