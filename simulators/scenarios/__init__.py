"""Shipped scenario files for the simulated rack."""
