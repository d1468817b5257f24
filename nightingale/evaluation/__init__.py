"""Evaluation harnesses: intrinsic metrics, zero-shot tasks, synthetic-data checks and the gate."""
