"""The network edge: WebSocket and HTTP endpoints, auth, protocol, room runner and tick loop."""
