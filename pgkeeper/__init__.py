"""pgkeeper: PostgreSQL backup and recovery as Prefect flows."""

__version__ = "0.1.0"
