"""The compliance report and the read-only key inventory behind ``status`` and ``report``."""
