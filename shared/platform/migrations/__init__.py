"""SQL migrations of the schema all services share (applied by ``shared.platform.db.migrate_shared``)."""
