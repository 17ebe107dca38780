"""Command line and local orchestration: ``adserver demo|edge|control-plane|collector|admin``."""
