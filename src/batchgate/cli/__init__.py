"""The command line: the server's entry points and a client for a running server."""
