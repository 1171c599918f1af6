"""Upstreams: where a request is finally answered, behind one small interface."""
