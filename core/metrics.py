"""Prometheus metrics of the message path (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

CALLBACKS = Counter("scrm_callbacks_total", "Callbacks received", ["channel", "outcome"])
CALLBACK_SECONDS = Histogram(
    "scrm_callback_seconds",
    "Time to answer a callback",
    ["channel"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INBOX_STORED = Counter("scrm_inbox_stored_total", "Events stored in the inbox (duplicates excluded)", ["channel"])
INBOX_DUPLICATES = Counter("scrm_inbox_duplicates_total", "Retried or re-pulled events ignored", ["channel"])
INBOX_PROCESSED = Counter("scrm_inbox_processed_total", "Inbox items handled", ["kind", "outcome"])
STORE_STATEMENTS = Counter("scrm_store_statements_total", "SQL statements sent to the store")
STORE_TRANSACTIONS = Counter("scrm_store_transactions_total", "Transactions begun on the store")
HANDED_OVER = Counter("scrm_queue_handed_over_total",
                      "Items claimed in the transaction that stored them and handed to this process's runner "
                      "(a callback, a kf pull, a turn's replies), not claimed again", ["queue"])
INFRA_FAULTS = Counter("scrm_infra_faults_total",
                       "Operations that met the store or Redis unavailable (a restart) and will be retried",
                       ["component", "place"])
INFRA_DOWN = Gauge("scrm_infra_down", "1 while this process finds the component unavailable", ["component"])
# Queue gauges, set from the store at each scrape (bot/health.py): every process shows the whole picture.
INBOX_LAG = Gauge("scrm_inbox_lag_seconds", "Age of the oldest unprocessed inbox item")
INBOX_BACKLOG = Gauge("scrm_inbox_backlog", "Inbox items waiting or in progress")
INBOX_FAILED = Gauge("scrm_inbox_failed", "Inbox items that failed permanently")
OUTBOX_LAG = Gauge("scrm_outbox_lag_seconds", "Age of the oldest unsent outbox item")
OUTBOX_BACKLOG = Gauge("scrm_outbox_backlog", "Outbox items waiting or in progress")
OUTBOX_FAILED = Gauge("scrm_outbox_failed", "Outbox items that failed permanently")
OUTBOX_LANE_BACKLOG = Gauge("scrm_outbox_lane_backlog", "Outbox items waiting or in progress, by lane "
                            "(reply, transactional, marketing)", ["lane"])
OUTBOX_LANE_FAILED = Gauge("scrm_outbox_lane_failed", "Outbox items that failed permanently, by lane", ["lane"])
QUEUE_DRAIN = Gauge("scrm_queue_drain_per_second", "Items finished (done or failed) per second over the last "
                    "minute, by every process together", ["queue"])
API_BUDGET_LEFT = Gauge("scrm_api_budget_left", "Calls left in the current window of an API's budget "
                        "(api: the account and the API path)", ["api", "window"])
SENT = Counter("scrm_sent_total", "API calls delivered from the outbox", ["kind"])
QUOTA_DECISIONS = Counter("scrm_quota_decisions_total", "Sends fitted to the platform's quota: merged, held back, "
                          "held, deferred, routed, skipped, refused", ["source", "decision"])
SEND_ERRORS = Counter("scrm_send_errors_total", "API errors while sending", ["kind", "errcode"])
FLOWS_STARTED = Counter("scrm_flows_started_total", "Conversations started, by flow and trigger kind", ["flow", "trigger"])
FLOWS_ENDED = Counter("scrm_flows_ended_total", "Conversations ended, by flow and reason", ["flow", "reason"])
CONVERSATIONS_WOKEN = Counter("scrm_conversations_woken_total", "Waiting conversations woken by their timer")
CHANNEL_ARRIVALS = Counter("scrm_channel_arrivals_total", "Arrivals through an entry channel code", ["channel"])
REFERRALS = Counter("scrm_referrals_total", "Friends attributed to an inviter")
REWARDS_GRANTED = Counter("scrm_rewards_granted_total", "Reward ledger grants", ["rule"])
GROUP_JOINS = Counter("scrm_group_joins_total", "Group-buy open and join attempts, by outcome", ["action", "outcome"])
GROUPS_CLOSED = Counter("scrm_groups_closed_total", "Groups that filled or expired", ["outcome"])
