"""What is built on many training runs: sweeps of (method, eps, seed), the paired-seed
statistics and verdict rules, their tables, and the gradient-fidelity instrument. Imports the
run engine (gradalign_fast.training); the engine never imports this."""
