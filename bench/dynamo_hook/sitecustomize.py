"""Imported by every Python process started with this directory on PYTHONPATH (the benchmark
starts the local stack so): counts its DynamoDB calls when AIADMIN_DYNAMODB_CALLS_DIR is set
(see bench/dynamo_calls.py)."""

import os

if os.environ.get("AIADMIN_DYNAMODB_CALLS_DIR"):
    from bench.dynamo_calls import install

    install(os.environ["AIADMIN_DYNAMODB_CALLS_DIR"])
