"""The public testing kit: hypothesis strategies and state machines for uow sessions and adapters."""
