"""Model files in and out: format detection, safe-ish loading, writing pruned models back."""
