"""Dead letters in the bucket: ingest writes them (one object per micro-batch and shard), ``rlplatform dlq``
reads them back as counts by reason with samples. Neither side needs Spark."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from rlplatform.infra import aws
from rlplatform_client.contract import REJECT_KINDS
from rlplatform_client.retry import aws_unreachable, retry

DEAD_LETTER_PREFIX = "dead-letters/"
# The reasons ingest itself adds to the contract's (a dead letter's ``kind``).
CONFLICT = "conflicting_resend"
PARSER_ERROR = "parser_error"
# Every reason a record can be dead-lettered for, with its meaning (the docs' reference page is generated from it).
REASONS: dict[str, str] = {
    **REJECT_KINDS,
    CONFLICT: "a step whose key is stored already with other content; the first content stays (one dead letter "
    "per step, naming the episode and `t`)",
    PARSER_ERROR: "the parser itself failed on the record: a bug in rlplatform, please report it; the record is "
    "dead-lettered instead of failing its batch",
}
# A dead letter keeps this much of its record.
DEAD_LETTER_SAMPLE_BYTES = 2048


def write_dead_letters(bucket: str, batch_id: int, dead: list[dict], shard_id: str | None = None) -> None:
    """One object per micro-batch and shard (a replay overwrites it with the same letters); an unreachable S3 is
    waited out, so no dead letter is lost."""
    name = f"batch-{batch_id:09d}" + (f"-{shard_id}" if shard_id else "")
    key = f"{DEAD_LETTER_PREFIX}{time.strftime('%Y/%m/%d')}/{name}.jsonl"
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


def read_dead_letters(bucket: str, samples_per_kind: int = 3) -> DeadLetterReport:
    """Every dead letter under the prefix, counted by kind, with the first samples of each."""
    s3 = aws.s3_client()
    report = DeadLetterReport()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=DEAD_LETTER_PREFIX):
        for obj in page.get("Contents", []):
            report.objects += 1
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
            for line in filter(None, body.splitlines()):
                letter = json.loads(line)
                kind = letter.get("kind", "invalid")
                report.counts[kind] += 1
                kept = report.samples.setdefault(kind, [])
                if len(kept) < samples_per_kind:
                    kept.append({**letter, "object": obj["Key"]})
    return report
