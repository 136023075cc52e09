-- The activity store. Every event is written once, to `events`; the other tables are kept by
-- materialized views from those same inserts, each ordered for the question it answers.
--
-- Ids are UUIDs; the zero UUID stands for "none" (a system action has no actor, a search no
-- document). Partitions are calendar months of occurred_at; every table keeps rows for 400 days
-- after occurred_at (longer than any window, and a year of training data for the ml service),
-- and all four expire together: an id forgotten by `event_ids` is no longer counted anywhere.
-- An insert repeated with the same deduplication token (a retry whose first attempt did land)
-- is dropped by ClickHouse, in the views as well: the last 1000 inserts' tokens are kept.

-- Every recorded event, ordered for one user's timeline, newest first.
CREATE TABLE IF NOT EXISTS {database}.events
(
    event_id UUID,
    actor_id UUID,
    kind UInt8,
    space_id UUID,
    document_id UUID,
    occurred_at DateTime64(6, 'UTC'),
    recorded_at DateTime64(6, 'UTC') DEFAULT now64(6),
    -- "client", or the platform event's type (e.g. "knowledge.document.created")
    source LowCardinality(String),
    attributes Map(String, String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (actor_id, occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Which event ids are recorded: the writer looks a batch's ids up here before inserting it.
-- Small granules: a lookup of a few hundred ids reads little beside them.
CREATE TABLE IF NOT EXISTS {database}.event_ids
(
    event_id UUID,
    occurred_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY event_id
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.event_ids_mv TO {database}.event_ids
AS SELECT event_id, occurred_at FROM {database}.events;

-- Views and edits of documents, ordered for one space's ranking over a window and one
-- document's counts (views are kind 1, edits kind 2).
CREATE TABLE IF NOT EXISTS {database}.document_events
(
    space_id UUID,
    kind UInt8,
    document_id UUID,
    occurred_at DateTime64(6, 'UTC'),
    actor_id UUID
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (space_id, kind, document_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.document_events_mv TO {database}.document_events
AS SELECT space_id, kind, document_id, occurred_at, actor_id FROM {database}.events
WHERE kind IN (1, 2) AND document_id != toUUID('00000000-0000-0000-0000-000000000000');

-- Documents the knowledge service deleted: left out of top documents.
CREATE TABLE IF NOT EXISTS {database}.deleted_documents
(
    space_id UUID,
    document_id UUID,
    occurred_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (space_id, document_id)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.deleted_documents_mv TO {database}.deleted_documents
AS SELECT space_id, document_id, occurred_at FROM {database}.events
WHERE source = 'knowledge.document.deleted';
