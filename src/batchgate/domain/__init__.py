"""Domain rules shared by every dialect and the engine: ids, statuses, prices, budgets, create rules."""
