"""The small HTTP JSON endpoints: records (players, matches, leaderboards), the lobby's rooms, admin."""
