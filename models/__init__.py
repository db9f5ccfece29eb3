"""Pure torch modules and their configs: no I/O."""
