"""Every default in one place, each with its unit (the rq habit: no magic numbers in code)."""

# --- ingest -------------------------------------------------------------------------------
#: Messages per ingest batch: one store transaction, and the point an interrupted scan resumes
#: from. SQLite writes every index page a transaction touched once per commit, and Message-IDs
#: and contacts land all over their indexes: 500-message batches wrote ~4 pages (16 KiB) per
#: message, 5000-message batches a fraction of that (benchmarks/ingest.py: the store stage
#: 28 s -> 13 s for 118k messages). Memory stays flat: two batches are in hand at most.
SCAN_BATCH_SIZE = 5000
#: The first batch of a folder is smaller, so storing starts while the rest is fetched.
SCAN_FIRST_BATCH_SIZE = 1000
#: UIDs per IMAP FETCH command within a batch. 500-1000 is as fast as larger commands and
#: keeps each response small (PITFALLS).
FETCH_UIDS_PER_COMMAND = 500
#: New messages in a folder from which a scan fetches and parses in a helper process (its own
#: mailbox connection) rather than on a thread: parsing and storing then use two cores instead
#: of sharing one interpreter lock. Starting the process costs about 0.7 s.
SCAN_PROCESS_MIN_MESSAGES = 20000
#: UIDs asked for per SEARCH when listing a folder's new messages: a SEARCH answer is one
#: line, and imaplib refuses lines over 1 MB (about 140,000 UIDs).
SEARCH_UID_SPAN = 50000
#: Upper bound of the UID list in one FETCH command, in bytes. Exchange/Office 365 reject
#: long command lines far below Dovecot's 64 KiB.
FETCH_MAX_COMMAND_BYTES = 8000
#: Distinct header values (address lines, subjects) whose parsed form is cached at ingest.
HEADER_CACHE_ENTRIES = 16384
#: Bytes of a client message's body fetched (BODY.PEEK[TEXT]<0.N>) to recognise
#: acknowledgements. Enough for a short reply above a quoted message, or a few inline answers
#: between quotes; a reply whose text (or quote) runs past it is never taken for thanks.
SNIPPET_BYTES = 2048
#: Share of a batch's messages that wanted their snippet from which the next batch's snippets
#: are fetched with its headers (every message's, wanted or not) instead of in a FETCH of
#: their own. On the 118k demo, snippets of all of INBOX in a FETCH of their own cost Dovecot
#: 18-38 µs a message (it reads each message file again); asked for with the headers, 0-12.
SNIPPETS_WITH_HEADERS_SHARE = 0.25
#: Seconds a FETCH's answers may take per message asked for, on top of IMAP_TIMEOUT_SECONDS:
#: a server that trickles bytes is given up then (Dovecot sends thousands a second).
IMAP_SECONDS_PER_MESSAGE = 0.05
#: Times a scan looks for a message the server cannot send (one that drops the connection
#: whenever it is fetched) before it gives the mailbox up until the next scan.
UNREADABLE_SEARCHES_PER_SCAN = 3
#: Times a single message is fetched on a new connection, each one lost, before it is
#: recorded as unreadable: a connection that drops by chance is not taken for the message.
UNREADABLE_ATTEMPTS = 3
#: Seconds before an IMAP socket operation times out.
IMAP_TIMEOUT_SECONDS = 60.0
#: An IMAP command other than FETCH (LOGIN, LIST, EXAMINE, STATUS, SEARCH, LOGOUT) is given
#: up when its answer is not complete within this many times timeout_seconds.
IMAP_COMMAND_TIMEOUTS = 4
#: Longest header value we keep, in characters; hostile mail has 100k-character headers.
MAX_HEADER_CHARS = 4000
#: Most recipient addresses kept per message (To and Cc each).
MAX_RECIPIENTS = 200

# --- care policy --------------------------------------------------------------------------
#: Business minutes an inbound message may wait for a reply (8 business hours).
REPLY_WITHIN_MINUTES = 8 * 60
#: Calendar days without any outbound mail before a principal or sponsor counts as silent.
SILENCE_AFTER_DAYS = {"principal": 21, "sponsor": 30}
#: A contact goes quiet when their current gap exceeds FACTOR x their median gap ...
GOING_QUIET_FACTOR = 3.0
#: ... and this many calendar days ...
GOING_QUIET_FLOOR_DAYS = 14
#: ... and they have written at least this many messages.
GOING_QUIET_MIN_MESSAGES = 6
#: A client is slowing when its last-week median response exceeds FACTOR x its baseline ...
SLOWING_FACTOR = 2.0
#: ... and at least this many business minutes ...
SLOWING_FLOOR_MINUTES = 120
#: ... with at least this many responses in the week and in the baseline.
SLOWING_MIN_RECENT = 3
SLOWING_MIN_BASELINE = 5
#: Days of history the slowing baseline covers (ending where the recent week starts).
SLOWING_BASELINE_DAYS = 90
#: Days over which response-time statistics in `status` are computed.
STATS_WINDOW_DAYS = 30
#: Calendar days after the client's last word on a thread that nobody answered before the
#: thread stops waiting. A first start on years of mail would otherwise alert about every
#: question never answered by email since the mailbox began (answered by phone, from an
#: unscanned mailbox, or in a new thread); a running worker alerts long before this.
WAITS_EXPIRE_AFTER_DAYS = 30
#: Days within which a reply that lost its References still joins a thread by subject.
SUBJECT_THREAD_WINDOW_DAYS = 30

# --- calendar -----------------------------------------------------------------------------
TIMEZONE = "UTC"
BUSINESS_HOURS = {
    "mon": "09:00-17:30",
    "tue": "09:00-17:30",
    "wed": "09:00-17:30",
    "thu": "09:00-17:30",
    "fri": "09:00-17:30",
}

# --- alerts and delivery ------------------------------------------------------------------
#: Share of a wait's reply window after which its owner hears "reply due soon" (policy.warn_at).
WARN_AT_SHARE = 0.75
#: Business minutes after the client's previous unanswered message before a further one on the
#: thread is a chaser (policy.chaser_after).
CHASER_AFTER_MINUTES = 60
#: Business minutes after notification before an alert escalates to the next level.
ESCALATE_AFTER_MINUTES = 8 * 60
#: How long an email is retried before it is failed for good (notify.give_up_after): kept,
#: visible, never dropped.
OUTBOX_GIVE_UP_AFTER = "3d"
#: Seconds a process holds an email it is sending: a process that dies mid-send leaves the
#: email to be sent again (same Message-ID) once this has passed.
OUTBOX_LEASE_SECONDS = 600
#: Seconds of the first retry delay; doubled each attempt, capped below.
OUTBOX_RETRY_BASE_SECONDS = 60
OUTBOX_RETRY_CAP_SECONDS = 3600
#: Seconds before an SMTP operation times out.
SMTP_TIMEOUT_SECONDS = 30.0

# --- storage ------------------------------------------------------------------------------
DATABASE_URL = "sqlite:///carewatch.db"
#: Milliseconds SQLite waits on a locked database before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30000
#: SQLite page cache per connection, KiB (a fixed cap: memory stays flat as the store grows).
SQLITE_CACHE_KIB = 65536
#: WAL pages between automatic checkpoints (each checkpoint syncs the database file).
SQLITE_WAL_CHECKPOINT_PAGES = 16384
#: Seconds a command waits for a lock the worker holds (check, outbox, digest) before it
#: says so and stops.
LOCK_WAIT_SECONDS = 120.0
#: Seconds a job waits for a free database connection before it fails with a store error.
STORE_POOL_TIMEOUT_SECONDS = 30.0
#: PostgreSQL connection settings (libpq's), unless the store URL sets them: a server that
#: accepts the connection and then says nothing is given up after connect_timeout seconds,
#: and a connection whose peer is gone (a network path that fails without a reset) is found
#: dead by TCP keepalives after about idle + interval x count seconds, not hours.
POSTGRES_CONNECT = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                    "keepalives_count": 3}

# --- delivery -----------------------------------------------------------------------------
#: An SMTP login (greeting, EHLO, STARTTLS, EHLO, AUTH) may take this many timeouts in all.
SMTP_LOGIN_ROUND_TRIPS = 4
#: Sending an email may take the timeout, plus its size at this rate (a slow link), plus
#: this much a recipient; a relay slower than that is treated as failed and retried later.
SMTP_MIN_BYTES_PER_SECOND = 20_000
SMTP_SECONDS_PER_RECIPIENT = 2.0

# --- configuration ------------------------------------------------------------------------
#: The environment variable naming the config file.
ENV_CONFIG = "CAREWATCH_CONFIG"
#: The prefix of settings given in the environment: CAREWATCH__SECTION__KEY.
ENV_PREFIX = "CAREWATCH__"

# --- service ----------------------------------------------------------------------------
#: The port of /healthz and /metrics (service.metrics_port).
METRICS_PORT = 9108
