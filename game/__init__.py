"""Pure game simulations: no asyncio, no I/O; the room runner drives them with a fixed dt."""
