"""Tessera's OPs and the models they serve."""
