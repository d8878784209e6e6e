"""A node among nodes: its rooms and players, the lobby connection, drain and recovery of dead nodes' rooms."""
