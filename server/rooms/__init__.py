"""The room host: rooms, their runner (ticks and timers), player sessions and snapshots."""
