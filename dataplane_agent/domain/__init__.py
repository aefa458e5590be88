"""Pure decisions of the agent: attempt phases, GPU capacity, reconnect backoff. No I/O."""
