"""The end-to-end demo (`recstream demo`) and the ML-100k world it builds, which the serving
benchmark shares: the stream, the three stage models trained on what it wrote, the BSE tables."""
