"""Step 4: lapses become alerts. check: AlertLifecycle.check applies owners' replies, syncs
alerts with the lapses and queues one email per recipient; emails: what such an email says;
lifecycle: the only place an alert's state moves (transition); tokens: the signed references
owners reply with."""
