"""Step 4: lapses become alerts with a lifecycle (open, notified, escalated, resolved...),
owners' replies are applied, and one email per owner per check is queued (desk)."""
