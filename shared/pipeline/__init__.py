"""Pipeline domain: spec validation, durations, glob matching and datum planning (pure, no I/O)."""
