"""THA4 — Talking Head(?) Anime 4 (seed 001): the official student models (face morpher + multi-resolution body
morpher, SIRENs) with a fast evaluator. Importing this package does not import torch."""
