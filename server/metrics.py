"""Prometheus metrics of the scoring server (exposed with --metrics-port)."""
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)

# Per model version, so a rollout's new version can be watched beside the old one. A call refused before its
# session's version was known counts under model_version="".
CHUNKS = Counter("moodstream_chunks_total", "Chunks received, by outcome and model version",
                 ["outcome", "model_version"])  # applied, duplicate, rejected
STREAMS_ACTIVE = Gauge("moodstream_streams_active", "Agent streams currently open")
SUBSCRIBERS_ACTIVE = Gauge("moodstream_subscribers_active", "Subscribe calls currently open")
ENCODER_QUEUE_DEPTH = Gauge("moodstream_encoder_queue_depth", "Segments waiting for the encoder")
ENCODER_BATCH_SIZE = Histogram("moodstream_encoder_batch_size", "Segments per encoder forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64))
ENCODE_SECONDS = Histogram("moodstream_encode_seconds", "Encoder forward pass time", buckets=_LATENCY_BUCKETS)
ENCODER_WAIT_SECONDS = Histogram("moodstream_encoder_wait_seconds", "Time a segment waited for the encoder",
                                 buckets=_LATENCY_BUCKETS)
CHUNK_TO_SCORE_SECONDS = Histogram("moodstream_chunk_to_score_seconds",
                                   "From a chunk's arrival to its durable score, by model version",
                                   ["model_version"], buckets=_LATENCY_BUCKETS)
# A rise of not_found is someone guessing codes; failed_precondition, links used twice or opened too late.
ENROLMENTS = Counter("moodstream_enrolments_total",
                     "Enrol calls, by outcome: enrolled (a resend by the same device included), or the status "
                     "the call was refused with (invalid_argument, not_found, failed_precondition, "
                     "permission_denied, unavailable)", ["outcome"])
REDIS_ERRORS = Counter("moodstream_redis_errors_total", "Redis calls that failed")
STATE_CACHE_LOOKUPS = Counter("moodstream_state_cache_lookups_total",
                              "Loads of a stored scorer state, by outcome: hit (the cached state matched the "
                              "stored head, rows not read) or miss (rows read and restored)", ["outcome"])
STATE_CACHE_EVICTIONS = Counter("moodstream_state_cache_evictions_total",
                                "Cached scorer states dropped to stay within --state-cache-mb")
STATE_CACHE_BYTES = Gauge("moodstream_state_cache_bytes", "Memory held by cached scorer states")
