"""Tokenizers, grain pipelines, the embedded corpus and synthetic datasets."""
