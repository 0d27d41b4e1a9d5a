"""Feedback: judges that score or compare responses (reward models now; functions and
LLM judges as later stages need them)."""
