"""Synthetic character engine: procedural anime-style characters, a 2.5D rig, paired data and ground truth."""
