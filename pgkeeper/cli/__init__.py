"""The `pgkeeper` command line: thin; parses arguments and calls flows."""
