"""SQL migrations of the schema all services share (applied by ``shared.db.migrate_shared``)."""
