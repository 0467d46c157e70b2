-- Transactional outbox: a service inserts its events here in the same transaction as the
-- state change they describe; shared.outbox.OutboxRelay publishes them to NATS and deletes them.
CREATE TABLE outbox (
    seq        bigserial   PRIMARY KEY,
    event_id   text        NOT NULL UNIQUE,
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
