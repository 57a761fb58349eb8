"""Oracles for tests: `authors_reference`, the GradAlign authors' training code in plain PyTorch;
`elle_reference`, the ELLE authors' regulariser and lambda schedule; `op_samples` and
`op_agreement`, the sample inputs of every op and the harness comparing an op with its
reference over them."""
