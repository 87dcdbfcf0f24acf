"""A snapshot shared with pg_dump, and the table statistics taken inside it.

The holding transaction exports its snapshot; pg_dump --snapshot dumps exactly that state,
and the row counts are taken in the same transaction, so the manifest's counts are exactly
what the dump holds, whatever other sessions commit meanwhile.
"""

from __future__ import annotations

# The snapshot itself lives in pgkeeper.dumpstream (no Prefect: `pgkeeper backup` may start the dump
# before importing it); re-exported here.
from pgkeeper.dumpstream import OUTPUT_SETTINGS as OUTPUT_SETTINGS
from pgkeeper.dumpstream import dump_session_settings as dump_session_settings
from pgkeeper.dumpstream import exported_snapshot as exported_snapshot

# The counts taken in the snapshot live in pgdb (restore and verify count a database the same way);
# re-exported here for the dump.
from pgkeeper.pgdb import object_counts as object_counts
from pgkeeper.pgdb import table_row_counts as table_row_counts


