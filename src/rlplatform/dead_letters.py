"""Reading the dead-letter prefix back: counts by reason and samples, for ``rlplatform dlq``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from rlplatform import aws
from rlplatform.ingest.job import DEAD_LETTER_PREFIX


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
