"""Importance criteria: score channel groups so the least important can be removed."""
