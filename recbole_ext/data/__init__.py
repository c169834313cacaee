"""Data: raw-file converters (``convert``) and the fixed-negatives evaluation protocol (``protocol``)."""
