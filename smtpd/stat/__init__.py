"""Typed statistics: kinds, updates and the backends control keeps them in."""
