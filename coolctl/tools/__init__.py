"""Offline and test tools: the demo and its broker, the simulated rack, the scenario runner, KPIs,
plots, identification and step tests, and the pytest plugin.

May import: everything but coolctl.cli.main."""
