"""The clinician dashboard: a web view of live score streams, fed by the public gRPC API.

`moodstream dashboard --server HOST:PORT --token T --participant P` serves it;
`moodstream.dashboard.server.BackgroundDashboard` runs it on a thread. Scores
are a screening aid, not a diagnosis, and every page says so.
"""
