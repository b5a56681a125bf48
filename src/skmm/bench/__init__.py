"""Benchmarks: the paper's synthetic study and (later) real finetuning tasks."""
