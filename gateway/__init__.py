"""The data plane of Tollgate."""
