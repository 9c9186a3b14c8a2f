"""Named SQL over the warehouse: staging views, marts with sidecars, and the session that holds them."""
