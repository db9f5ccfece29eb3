"""Datasets: MovieLens-100k (fetched at run time, never committed) and synthetic generators."""
