"""settlement layer: built in its own issue (see ../shared/DESIGN.md)."""
