"""The daemon edge: sockets, the loop, routing, handlers, metrics, sd_notify."""
