"""Generation, System 2 evaluation and benchmarks."""
