"""Step 4: lapses become alerts (desk: AlertLifecycle.check applies owners' replies, syncs
alerts with the lapses and queues one email per owner), moved only by lifecycle.transition;
tokens signs the references in alert emails."""
