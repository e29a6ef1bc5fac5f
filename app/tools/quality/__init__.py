"""Offline quality: embedding training from ratings, replay evaluation, the quality report."""
