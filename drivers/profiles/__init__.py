"""Device profiles: data files that map a device model to canonical points."""
