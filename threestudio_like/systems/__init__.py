"""Lightning systems, one module per recipe family; found by the registry."""
