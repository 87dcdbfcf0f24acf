"""What Prefect's `prefect.collections` entry point imports: pgkeeper's block types, after the
block types they nest.

A Prefect server registers the block classes imported in its process in the order they were
defined, and refuses a schema whose nested block type (the repository's S3Bucket) it has not
registered yet. The repository block imports prefect-aws only when a bucket is used
(blocks/repository.py), and the server may load pgkeeper's collection before prefect-aws's:
so here, for the server and the workers, prefect-aws comes first. (This module is outside
pgkeeper.blocks on purpose: a package's __init__ runs before its modules, and that one imports
the repository block.)
"""

import prefect_aws  # noqa: F401 (AwsCredentials and S3Bucket defined, so registered, before the repository)

from pgkeeper.blocks import BackupRepository, MailNotification, PostgresConnection

__all__ = ["BackupRepository", "MailNotification", "PostgresConnection"]
