"""Queue logic that does not depend on the database: transitions, retry policy, workers, recovery."""
