"""Platform: configuration, the error tree, Postgres, the event bus and outbox, HTTP plumbing, service start-up."""
