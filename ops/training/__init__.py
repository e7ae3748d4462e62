"""Training of the bundled DALL·E on the shapes world. Its evaluation runs the graph the server
serves, so it is the server's (server/evaluate.py, `tessera evaluate`)."""
