"""The units of work. Each is small and retryable, and passes paths and small records."""
