"""Step 2 of the flow: read new mail from a mailbox source and store it.

scan (the Ingestor: folders, batches, cursors, isolation of bad messages) -> prepare (fetch,
parse, classify a batch) -> helper (the same in a process of its own for big backlogs);
headers (decoding a header block), classify (direction, client, automated mail),
acknowledgement ("thanks!" notes), reply_commands (owners' "snooze 3d" / "done"),
unreadable (finding a message the server cannot send), run (open the store, sync the
directory, run a scan).
"""
