"""Use cases every dialect shares, with no HTTP in them: each dialect's router parses its request and calls these."""
