"""What the service tells its operators: logs, traces, metrics and health probes."""
