"""Exit codes of the `leadscore` commands, one home for all of them, so scripts can rely on them."""

EXIT_BAD_DATA = 2  # the data or a config file break the contract; the message lists every problem
EXIT_MISSING_INPUT = 3  # an input (file, folder, model alias) is missing
EXIT_GATE_REFUSED = 4  # promote: the challenger is worse than the champion beyond the tolerance
EXIT_QUALITY_WARNINGS = 5  # promote: the challenger carries quality warnings and --accept-warnings was not given
