"""The long-running worker (worker: the schedule of scans, checks, delivery and the digest;
IDLE; signals), its /healthz and /metrics (metrics) and the container's HEALTHCHECK
(healthcheck)."""
