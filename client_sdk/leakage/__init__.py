"""Measured privacy: what per-token DP noise on the released activations costs the client (utility) and
what it still leaks (prompt tokens recovered by attacks that know the mechanism, and the output the last
node reads with the public LM head). `splitmesh privacy` runs it; the result ships as the leakage table.

corpus.py (public text, split into attacker-train and eval), features.py (model pieces and cached
noiseless features per split), mechanism.py (the clip + Gaussian noise, replayed with a seeded test-only
generator), utility.py, attacks.py, report.py (the grid, the table, the plot).
"""
