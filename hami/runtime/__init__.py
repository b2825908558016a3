"""Domain-agnostic asyncio infrastructure: tasks, backoff, shutdown, clocks, logging."""
