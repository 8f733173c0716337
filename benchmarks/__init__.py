"""Benchmarks: measured side by side with the reference (nginx) in one run; see RESULTS.md."""
