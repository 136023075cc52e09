"""A local SMTP sink with a Mailpit-compatible HTTP API, so tests can read what was sent."""
