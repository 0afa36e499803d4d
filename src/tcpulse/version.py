"""The package's version: one place, imported by everything that reports it."""

__version__ = "0.1.0"
