"""The web console (issue #15): server-rendered pages over PFS's and PPS's HTTP APIs, kept
current by server-sent events that follow the cluster's NATS events (docs/console.md)."""
