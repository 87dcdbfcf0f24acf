"""WAL archiving. The push path imports neither Prefect nor boto3 (see DESIGN.md)."""
