"""Step 2 of the flow: read new mail from a mailbox source and store it.

scan (the Ingestor: folders, batches, cursors) -> prepare (fetch, parse, classify a batch;
helper: the same in a process of its own for big backlogs) -> storing (copies, reused
Message-IDs, a message that cannot be stored). Beside them: headers (decoding a header block),
classify (direction, client, automated mail), acknowledgement ("thanks!" notes),
reply_commands (owners' "snooze 3d" / "done"), unreadable (a message the server cannot send),
folders (folder states as stored), reports (what a scan reports), reclassify (stored mail
judged again), run (open the store, sync the directory, run a scan).
"""
