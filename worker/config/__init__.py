"""The configuration: the TOML schema, loading, environment overrides and checks (settings),
and `validate --connect`'s tries of every server (connect)."""
