"""WAL archiving. The push path imports neither Prefect nor boto3 (tests/test_wal_push.py checks it)."""
