"""Long-running online services: the Ray Serve application and its stages."""
