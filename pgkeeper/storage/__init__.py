"""Where bytes go. One interface, one driver per backend; flows and tasks never look past it."""
