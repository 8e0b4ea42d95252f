"""Collection stage: Kinesis -> Spark Structured Streaming -> experience store."""
