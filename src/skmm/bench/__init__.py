"""Benchmarks: the paper's synthetic study and real finetuning tasks (docs/benchmarks.md)."""
