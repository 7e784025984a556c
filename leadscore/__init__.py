"""The `leadscore` command: training and serving commands under one name."""
