"""Running a node: settings, logs, metrics, the embedded Redis and Postgres, the event loop."""
