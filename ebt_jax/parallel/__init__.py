"""Meshes, logical-axis rules, shardings and multi-host start-up."""
