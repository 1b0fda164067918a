"""EnergyMesh services: one shared kernel and one package per service."""
