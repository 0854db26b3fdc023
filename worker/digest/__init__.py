"""Step 5: the partners' weekly digest, built from two evaluations a week apart (build)."""
