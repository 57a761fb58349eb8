"""Oracles for tests: `authors_reference`, the GradAlign authors' training code in plain PyTorch;
`elle_reference`, the ELLE authors' regulariser and lambda schedule."""
