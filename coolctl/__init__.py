"""coolctl: a rack manager daemon for liquid-cooled racks."""

__version__ = "0.1.0"
