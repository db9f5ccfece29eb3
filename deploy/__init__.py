"""Deployment assets: the local dev stack launcher, compose file, Prometheus/Grafana config."""
