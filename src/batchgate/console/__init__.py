"""The web console: its page, its static files and the JSON it reads."""
