"""Oracles for tests: `authors_reference`, the authors' training code in plain PyTorch."""
