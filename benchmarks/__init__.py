"""The benchmarks behind reports/: one module per report (stream, models, serving, replay; and
cascade_ml100k, run as `python -m benchmarks.cascade_ml100k`) and their commands (`recstream bench
...`, benchmarks/commands.py). They sit above pipelines and services (the serving benchmark drives
both), beside the CLI face."""
