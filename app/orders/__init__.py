"""Orders: what users buy, its status machine, idempotent creation and the read cache."""
