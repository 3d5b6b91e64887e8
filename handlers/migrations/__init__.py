"""The billing app's own tables, tracked apart from the engine's (as ``billing``)."""
