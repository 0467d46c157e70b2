-- Secrets (tusk create secret). Values are never stored in clear: ``sealed`` is
-- nonce || AES-256-GCM of their JSON under the key in PPS's secrets_key_file, bound to
-- the name; ``key_id`` says which key. Key names stay readable for listings.
CREATE TABLE pps_secrets (
    name        text PRIMARY KEY,
    type        text NOT NULL,
    keys        text[] NOT NULL,
    key_id      text NOT NULL,
    sealed      bytea NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now()
);
