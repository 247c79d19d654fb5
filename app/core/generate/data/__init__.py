"""Data files shipped with the generate package (the public-domain comparison sample)."""
