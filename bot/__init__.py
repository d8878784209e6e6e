"""The headless bot client, which is also Tickroom's load generator."""
