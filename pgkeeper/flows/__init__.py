"""One module per user-facing flow. Orchestration only: which tasks, in what order."""
