"""Where the service listens by default: plain constants, so the command line shows them without importing it."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
