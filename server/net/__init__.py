"""The network edge: the WebSocket listener, connections, auth and the wire protocol."""
