"""Tessera's server: the graph engine (server.engine) and the gRPC front end (server.rpc)."""
