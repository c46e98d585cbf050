"""The pure core: the model, the freshness rules and the state machine. No I/O, no clock reads."""
