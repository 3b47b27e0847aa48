"""Reasoning through lm-evaluation-harness: task declarations, the local item generators and
task sets, the harness run per condition, the high-versus-low analysis."""
