"""API: the records, event schemas, names and HTTP client SDKs that services, CLI and workers share."""
