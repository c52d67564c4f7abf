"""Tests that run real afterwork worker processes, supervisors and commands."""
