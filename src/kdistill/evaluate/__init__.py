"""Evaluation: report rows (accuracy, size, latency, agreement), evaluation samples, seed groups."""
