"""System checks for dangerous configurations (stable IDs: wedsync.E0xx / wedsync.W0xx)."""
