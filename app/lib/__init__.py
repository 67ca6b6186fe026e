"""Cross-cutting infrastructure; knows no domain."""
