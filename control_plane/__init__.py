"""Central region: advertiser API, campaign store, snapshot builder, budget allocator, collector, reporting."""
