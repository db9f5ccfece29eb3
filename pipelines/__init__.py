"""Jobs that move data: stream processors, dataset builders, training, replay, benchmarks."""
