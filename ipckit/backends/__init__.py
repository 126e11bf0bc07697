"""Backends, one module per scheme, each imported only when its scheme is first used."""
