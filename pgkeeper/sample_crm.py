"""A sample CRM database: companies, "User" accounts, contacts, deals and activities.

Realistic types (text, numeric, timestamptz, jsonb, a mixed-case quoted table name, foreign
keys), generated server-side with generate_series so a large one is quick to make.
"""

from __future__ import annotations

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS company (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    domain      text UNIQUE,
    industry    text,
    revenue     numeric(14,2),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS "User" (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    role        text NOT NULL DEFAULT 'sales',
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS contact (
    id          bigserial PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES company(id),
    owner_id    bigint REFERENCES "User"(id),
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text,
    phone       text,
    tags        text[],
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS deal (
    id          bigserial PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES company(id),
    contact_id  bigint REFERENCES contact(id),
    owner_id    bigint REFERENCES "User"(id),
    title       text NOT NULL,
    stage       text NOT NULL,
    amount      numeric(12,2) NOT NULL,
    closes_on   date,
    details     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS activity (
    id          bigserial PRIMARY KEY,
    deal_id     bigint REFERENCES deal(id),
    contact_id  bigint REFERENCES contact(id),
    kind        text NOT NULL,
    note        text,
    payload     jsonb,
    happened_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS contact_company_idx ON contact(company_id);
CREATE INDEX IF NOT EXISTS deal_company_idx ON deal(company_id);
CREATE INDEX IF NOT EXISTS deal_stage_idx ON deal(stage);
CREATE INDEX IF NOT EXISTS activity_deal_idx ON activity(deal_id);
"""

# Rows per unit of scale; scale 1 is roughly 10 MB on disk.
_PER_SCALE = {"company": 500, "User": 50, "contact": 5_000, "deal": 4_000, "activity": 20_000}

FILL = """
INSERT INTO company (name, domain, industry, revenue, created_at)
SELECT 'Company ' || g, 'company' || g || '.example', (ARRAY['retail','saas','energy','health'])[1 + g %% 4],
       round((random() * 1e7)::numeric, 2), now() - (g %% 1000) * interval '1 hour'
FROM generate_series(%(c0)s + 1, %(c0)s + %(companies)s) g;

INSERT INTO "User" (email, full_name, role, settings)
SELECT 'user' || g || '@crm.example', 'User Number ' || g, (ARRAY['sales','admin','support'])[1 + g %% 3],
       jsonb_build_object('theme', CASE WHEN g %% 2 = 0 THEN 'dark' ELSE 'light' END, 'tz', 'UTC')
FROM generate_series(%(u0)s + 1, %(u0)s + %(users)s) g;

INSERT INTO contact (company_id, owner_id, first_name, last_name, email, phone, tags)
SELECT (SELECT min(id) FROM company) + (g %% %(ctotal)s), (SELECT min(id) FROM "User") + (g %% %(utotal)s),
       'First' || g, 'Last' || g, 'contact' || g || '@mail.example', '+1-555-' || lpad((g %% 10000)::text, 4, '0'),
       ARRAY['lead', 'q' || (1 + g %% 4)]
FROM generate_series(1, %(contacts)s) g;

INSERT INTO deal (company_id, contact_id, owner_id, title, stage, amount, closes_on, details)
SELECT (SELECT min(id) FROM company) + (g %% %(ctotal)s), (SELECT min(id) FROM contact) + (g %% %(contacts)s),
       (SELECT min(id) FROM "User") + (g %% %(utotal)s), 'Deal ' || g,
       (ARRAY['lead','qualified','proposal','won','lost'])[1 + g %% 5], round((random() * 100000)::numeric, 2),
       current_date + (g %% 90), jsonb_build_object('source', 'web', 'score', g %% 100, 'notes', repeat('x', g %% 50))
FROM generate_series(1, %(deals)s) g;

INSERT INTO activity (deal_id, contact_id, kind, note, payload, happened_at)
SELECT (SELECT min(id) FROM deal) + (g %% %(deals)s), (SELECT min(id) FROM contact) + (g %% %(contacts)s),
       (ARRAY['call','email','meeting','note'])[1 + g %% 4], 'Activity note ' || md5(g::text),
       jsonb_build_object('duration', g %% 60, 'outcome', (ARRAY['ok','no answer','follow up'])[1 + g %% 3]),
       now() - (g %% 5000) * interval '1 minute'
FROM generate_series(1, %(activities)s) g;
"""


def create_crm(conninfo: str, scale: float = 1.0) -> dict[str, int]:
    """Create (or grow) the CRM schema in the database at `conninfo`; return row counts."""
    n = {k: max(1, int(v * scale)) for k, v in _PER_SCALE.items()}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SCHEMA)
        c0 = conn.execute("SELECT coalesce(max(id), 0) FROM company").fetchone()[0]
        u0 = conn.execute('SELECT coalesce(max(id), 0) FROM "User"').fetchone()[0]
        params = {"c0": c0, "u0": u0, "companies": n["company"], "users": n["User"],
                  "ctotal": c0 + n["company"], "utotal": u0 + n["User"], "contacts": n["contact"],
                  "deals": n["deal"], "activities": n["activity"]}
        with conn.transaction():
            # Several statements with parameters need client-side binding.
            psycopg.ClientCursor(conn).execute(FILL, params)
        conn.execute("ANALYZE")
        return table_counts(conn)


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for name in ("company", '"User"', "contact", "deal", "activity"):
        counts[name.strip('"')] = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    return counts
