"""The `coolctl` command line.

May import: everything."""
