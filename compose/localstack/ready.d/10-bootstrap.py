"""LocalStack READY hook: create rlplatform's Kinesis stream and S3 bucket inside the emulator.

LocalStack runs ``.py`` init hooks in its own interpreter with ``exec(source, {})``: there is no
``__file__`` and ``__name__`` is not ``"__main__"``, so everything below runs at top level. boto3
is part of LocalStack's environment. The work is done by rlplatform's own boto3-only bootstrap
function, mounted read-only at /opt/rlplatform/bootstrap.py by docker-compose.yml, so the emulator
gets exactly the resources ``rlplatform bootstrap`` would create. Names come from the same RLP_*
variables, with the same defaults, as ``rlplatform.settings.Settings``. An exception marks the hook
as ERROR, which keeps the localstack service unhealthy (see its healthcheck).
"""

import os
import sys

import boto3

BOOTSTRAP_DIR = "/opt/rlplatform"
# LocalStack's gateway: 4566 in its container; GATEWAY_LISTEN ("host:port[,...]") where the tests run it on a
# host (tests/localstack_node.py), with the port they chose.
_port = os.environ.get("GATEWAY_LISTEN", ":4566").split(",")[0].rsplit(":", 1)[-1]
ENDPOINT = f"http://127.0.0.1:{_port}"

if BOOTSTRAP_DIR not in sys.path:
    sys.path.insert(0, BOOTSTRAP_DIR)
from bootstrap import bootstrap  # noqa: E402  (the path is only known at run time)

_region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
# LocalStack accepts any credentials; "test" maps to its default account 000000000000, the same
# account the platform's services use (docker-compose.yml sets the same dummy credentials).
_client_args = {
    "endpoint_url": ENDPOINT,
    "region_name": _region,
    "aws_access_key_id": "test",
    "aws_secret_access_key": "test",
}
bootstrap(
    stream_name=os.environ.get("RLP_STREAM_NAME", "rlp-experience"),
    shard_count=int(os.environ.get("RLP_SHARD_COUNT", "2")),
    bucket=os.environ.get("RLP_BUCKET", "rlp-models"),
    kinesis=boto3.client("kinesis", **_client_args),
    s3=boto3.client("s3", **_client_args),
)
print(f"rlplatform bootstrap hook: stream and bucket ready in {_region}")
