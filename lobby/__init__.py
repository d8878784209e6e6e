"""Matchmaking and presence on Redis (arrives with the lobby issue)."""
