"""Step 3: the care picture at a moment `now`: facts (read from the store) -> evaluate (waits,
statistics, lapses); clock (business time), policy (thresholds by client and role), explain
(why one stored message does or does not make anyone wait)."""
